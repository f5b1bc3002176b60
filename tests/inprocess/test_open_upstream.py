"""An upstream without auth behind a path alias (issue 8, item 3).

podman and skopeo take the challenge of their ``/v2/`` ping (the default
upstream's) and ask its realm for ``repository:<alias>/<name>:pull``
before pulling from an upstream whose ``/v2/`` is open. They get Docxy's
anonymous token, which must never reach an upstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest_twisted
from twisted.web.server import Request

from docxy.own_tokens import ANONYMOUS_TOKEN, OFFLINE_TOKEN

from .harness import FakeUpstream, Harness, listen, start

MANIFEST = b'{"schemaVersion":2}'


def challenge(request: Request) -> bytes:
    request.setResponseCode(401)
    request.setHeader(
        b"www-authenticate", b'Bearer realm="https://auth.example/token",service="s"'
    )
    return b'{"errors":[{"code":"UNAUTHORIZED"}]}'


def manifest(request: Request) -> bytes:
    request.setHeader(b"content-type", b"application/vnd.oci.image.manifest.v1+json")
    return MANIFEST


@pytest_twisted.async_yield_fixture
async def mirror() -> AsyncIterator[tuple[Harness, FakeUpstream]]:
    """Docxy with a token-auth default upstream and an open one at ``internal``."""
    hub, internal = FakeUpstream(), FakeUpstream()
    hub.routes[b"/v2/"] = challenge
    internal.routes[b"/v2/"] = lambda request: b"{}"
    internal.routes[b"/v2/team/app/manifests/1"] = manifest
    internal.port = await listen(internal)
    harness = await start(
        hub, {"upstreams": {"internal": {"url": internal.url, "aliases": ["internal"]}}}
    )
    harness.extra.append(internal.port)
    yield harness, internal
    await harness.stop()


async def token(harness: Harness, path: str) -> dict[str, object]:
    reply = await harness.request(b"GET", path)
    assert reply.code == 200, reply.body
    doc: dict[str, object] = json.loads(reply.body)
    return doc


@pytest_twisted.ensureDeferred
async def test_token_for_an_open_upstream_is_anonymous(
    mirror: tuple[Harness, FakeUpstream],
) -> None:
    harness, internal = mirror
    by_alias = await token(
        harness, "/auth/token?service=s&scope=repository:internal/team/app:pull"
    )
    own_realm = await token(
        harness, "/auth/internal/token?scope=repository:team/app:pull"
    )
    for doc in (by_alias, own_realm):
        assert doc["token"] == doc["access_token"] == ANONYMOUS_TOKEN
        assert isinstance(doc["expires_in"], int) and doc["expires_in"] > 0
    # Asked nothing but the open /v2/ (no token service to ask).
    assert {seen.uri for seen in internal.seen} == {b"/v2/"}


@pytest_twisted.ensureDeferred
async def test_own_tokens_are_never_forwarded(
    mirror: tuple[Harness, FakeUpstream],
) -> None:
    harness, internal = mirror
    for own in (ANONYMOUS_TOKEN, OFFLINE_TOKEN):
        reply = await harness.request(
            b"GET",
            "/v2/internal/team/app/manifests/1",
            {b"authorization": [f"Bearer {own}".encode()]},
        )
        assert (reply.code, reply.body) == (200, MANIFEST)
        assert not internal.seen[-1].headers.hasHeader(b"authorization")
    # A real credential still goes through.
    await harness.request(
        b"GET",
        "/v2/internal/team/app/manifests/1",
        {b"authorization": [b"Bearer upstream-token"]},
    )
    assert internal.seen[-1].headers.getRawHeaders(b"authorization") == [
        b"Bearer upstream-token"
    ]
