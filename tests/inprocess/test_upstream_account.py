"""The mirror's account at an upstream: used for anonymous clients, cached per
scope, and sent only to the upstream's own realm (CVE-2026-33540 class)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.web.server import Request, Site
from zope.interface import implementer

from .harness import FakeUpstream, Harness, challenge_to, start, token_answer

PASSWORD = "s3cret-Pa55"
BASIC = b"Basic " + base64.b64encode(f"alice:{PASSWORD}".encode())
MANIFEST = b'{"schemaVersion":2}'


def manifest_for(token: bytes) -> Any:
    def handler(request: Request) -> bytes:
        if request.getHeader(b"authorization") != token:
            answer: bytes = challenge_to("unused")(request)
            return answer
        request.setHeader(
            b"content-type", b"application/vnd.oci.image.manifest.v1+json"
        )
        return MANIFEST

    return handler


def account_token(request: Request) -> bytes:
    """The upstream's own realm: alice's password gets alice's token."""
    if request.getHeader(b"authorization") == BASIC:
        return token_answer("alice-token")
    return token_answer("anonymous-token")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def errors() -> Iterator[list[str]]:
    seen: list[str] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def foreign() -> AsyncIterator[FakeUpstream]:
    """A realm on another host (127.0.0.2): it must never see the password."""
    recorder = FakeUpstream()
    recorder.routes[b"/token"] = lambda request: token_answer("foreign-token")
    recorder.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2").listen(
        Site(recorder)
    )
    yield recorder
    await recorder.port.stopListening()


async def with_account(
    upstream: FakeUpstream, password_file: Path, **settings: object
) -> Harness:
    return await start(
        upstream,
        {
            "upstream-username": "alice",
            "upstream-password-file": str(password_file),
            **settings,
        },
    )


def foreign_url(recorder: FakeUpstream) -> str:
    return f"http://127.0.0.2:{recorder.port.getHost().port}/token"


@pytest_twisted.ensureDeferred
async def test_anonymous_clients_pull_with_the_account_one_token_for_all(
    password_file: Path,
) -> None:
    upstream = FakeUpstream()
    docxy = await with_account(upstream, password_file)
    upstream.routes[b"/v2/"] = challenge_to(f"{upstream.url}/token")
    upstream.routes[b"/token"] = account_token
    upstream.routes[b"/v2/library/app/manifests/1"] = manifest_for(
        b"Bearer alice-token"
    )
    try:
        # The client's dance: ping, Docxy's token (not the upstream's), pull.
        ping = await docxy.request(b"GET", "/v2/")
        assert ping.code == 401
        token = await docxy.request(b"GET", "/auth/token?scope=repository:app:pull")
        assert token.code == 200
        ours = json.loads(token.body)["token"]
        assert ours not in ("alice-token", "anonymous-token")
        for _ in range(3):
            reply = await docxy.request(
                b"GET",
                "/v2/app/manifests/1",
                {b"authorization": [f"Bearer {ours}".encode()]},
            )
            assert reply.code == 200, reply.body
            assert reply.body == MANIFEST
    finally:
        await docxy.stop()
    token_requests = [s for s in upstream.seen if s.uri.startswith(b"/token")]
    # One token for every pull of that scope: cached and shared.
    assert len(token_requests) == 1
    assert token_requests[0].headers.getRawHeaders(b"authorization") == [BASIC]
    assert b"scope=repository%3Alibrary%2Fapp%3Apull" in token_requests[0].uri


@pytest_twisted.ensureDeferred
async def test_the_clients_own_credentials_win(password_file: Path) -> None:
    upstream = FakeUpstream()
    docxy = await with_account(upstream, password_file)
    upstream.routes[b"/v2/"] = challenge_to(f"{upstream.url}/token")
    upstream.routes[b"/token"] = lambda request: token_answer("bob-token")
    upstream.routes[b"/v2/library/app/manifests/1"] = manifest_for(b"Bearer bob-token")
    try:
        bob = b"Basic " + base64.b64encode(b"bob:pw")
        token = await docxy.request(
            b"GET", "/auth/token?scope=repository:app:pull", {b"authorization": [bob]}
        )
        assert json.loads(token.body)["token"] == "bob-token"
        reply = await docxy.request(
            b"GET", "/v2/app/manifests/1", {b"authorization": [b"Bearer bob-token"]}
        )
        assert reply.code == 200
    finally:
        await docxy.stop()
    sent = [s.headers.getRawHeaders(b"authorization") for s in upstream.seen]
    assert [BASIC] not in sent  # the mirror's account was never needed


@pytest_twisted.ensureDeferred
async def test_a_challenge_naming_a_foreign_realm_never_gets_the_password(
    password_file: Path, foreign: FakeUpstream, errors: list[str]
) -> None:
    upstream = FakeUpstream()
    docxy = await with_account(upstream, password_file)
    upstream.routes[b"/v2/"] = challenge_to(foreign_url(foreign))
    upstream.routes[b"/v2/library/app/manifests/1"] = manifest_for(
        b"Bearer foreign-token"
    )
    upstream.routes[b"/v2/library/other/manifests/1"] = manifest_for(
        b"Bearer foreign-token"
    )
    try:
        for name in ("app", "other", "app"):
            reply = await docxy.request(b"GET", f"/v2/{name}/manifests/1")
            assert reply.code == 200, reply.body
    finally:
        await docxy.stop()
    assert len(foreign.seen) == 2  # anonymous token requests, one per scope
    for seen in foreign.seen:
        assert not seen.headers.hasHeader(b"authorization")
        assert PASSWORD.encode() not in seen.uri + seen.body
    refusals = [e for e in errors if "not sending the account" in e]
    assert len(refusals) == 1, errors  # logged once
    assert PASSWORD not in "".join(errors)


@pytest_twisted.ensureDeferred
async def test_the_account_never_follows_a_redirect_of_its_realm(
    password_file: Path, foreign: FakeUpstream
) -> None:
    upstream = FakeUpstream()
    docxy = await with_account(upstream, password_file)
    upstream.routes[b"/v2/"] = challenge_to(f"{upstream.url}/token")

    def moved(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", foreign_url(foreign).encode())
        return b""

    upstream.routes[b"/token"] = moved
    try:
        reply = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert reply.code == 502
        assert json.loads(reply.body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await docxy.stop()
    assert foreign.seen == []


@pytest_twisted.ensureDeferred
async def test_a_listed_realm_host_gets_the_account(
    password_file: Path, foreign: FakeUpstream
) -> None:
    foreign.routes[b"/token"] = account_token
    upstream = FakeUpstream()
    upstream.port = None
    docxy = await start(
        upstream,
        {
            "upstreams": {
                "docker.io": {
                    "username": "alice",
                    "password-file": str(password_file),
                    "realm-hosts": ["127.0.0.2"],
                }
            }
        },
    )
    upstream.routes[b"/v2/"] = challenge_to(foreign_url(foreign))
    upstream.routes[b"/v2/library/app/manifests/1"] = manifest_for(
        b"Bearer alice-token"
    )
    try:
        reply = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert reply.code == 200, reply.body
    finally:
        await docxy.stop()
    assert [s.headers.getRawHeaders(b"authorization") for s in foreign.seen] == [
        [BASIC]
    ]


@pytest_twisted.ensureDeferred
async def test_a_token_the_upstream_refuses_is_not_used_again(
    password_file: Path,
) -> None:
    upstream = FakeUpstream()
    docxy = await with_account(upstream, password_file)
    issued = iter(["revoked-token", "fresh-token"])
    upstream.routes[b"/v2/"] = challenge_to(f"{upstream.url}/token")
    upstream.routes[b"/token"] = lambda request: token_answer(next(issued))
    upstream.routes[b"/v2/library/app/manifests/1"] = manifest_for(
        b"Bearer fresh-token"
    )
    try:
        first = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert first.code == 401  # the client is told to come again
        second = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert second.code == 200, second.body
    finally:
        await docxy.stop()
