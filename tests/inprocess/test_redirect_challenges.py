"""A challenge from a redirect target (a CDN) is not the upstream's: its realm
never becomes the one Docxy sends the clients' credentials to."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.server import Request, Site

from .harness import (
    FakeUpstream,
    Handler,
    Harness,
    Reply,
    challenge_to,
    start,
    token_answer,
)

BASIC = b"Basic " + base64.b64encode(b"alice:s3cret")
BLOB = "/v2/library/app/blobs/sha256:" + "a" * 64


def redirect_to(location: str) -> Handler:
    def handler(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", location.encode())
        return b""

    return handler


async def log_in(docxy: Harness) -> Reply:
    """A token request with the client's own credentials."""
    return await docxy.request(
        b"GET", "/auth/token?scope=repository:app:pull", {b"authorization": [BASIC]}
    )


@pytest_twisted.async_yield_fixture
async def cdn() -> AsyncIterator[FakeUpstream]:
    """Another host (127.0.0.2) the upstream redirects blobs to."""
    recorder = FakeUpstream()
    recorder.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2").listen(
        Site(recorder)
    )
    yield recorder
    await recorder.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_redirect_targets_challenge_does_not_move_the_realm(
    cdn: FakeUpstream,
) -> None:
    upstream = FakeUpstream()
    docxy = await start(upstream)
    try:
        cdn_url = f"http://127.0.0.2:{cdn.port.getHost().port}"
        upstream.routes[b"/v2/"] = challenge_to(f"{upstream.url}/token")
        upstream.routes[b"/token"] = lambda request: token_answer("alice-token")
        upstream.routes[BLOB.encode()] = redirect_to(f"{cdn_url}/blob")
        cdn.routes[b"/blob"] = challenge_to(f"{cdn_url}/token")
        assert (await docxy.request(b"GET", "/v2/")).code == 401
        reply = await docxy.request(b"GET", BLOB, {b"authorization": [b"Bearer t"]})
        assert reply.code == 401
        assert (await log_in(docxy)).code == 200
        assert [s.uri for s in cdn.seen] == [b"/blob"]
        assert all(not s.headers.hasHeader(b"authorization") for s in cdn.seen)
        asked = [s for s in upstream.seen if s.uri.startswith(b"/token")]
        assert [s.headers.getRawHeaders(b"authorization") for s in asked] == [[BASIC]]
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_redirected_ping_does_not_name_the_realm(cdn: FakeUpstream) -> None:
    upstream = FakeUpstream()
    docxy = await start(upstream)
    try:
        cdn_url = f"http://127.0.0.2:{cdn.port.getHost().port}"
        upstream.routes[b"/v2/"] = redirect_to(f"{cdn_url}/v2/")
        cdn.routes[b"/v2/"] = challenge_to(f"{cdn_url}/token")
        assert (await log_in(docxy)).code == 502
        assert [s.uri for s in cdn.seen] == [b"/v2/"]
    finally:
        await docxy.stop()
