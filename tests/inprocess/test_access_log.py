"""The access log line: which upstream, the client's ns and user agent, and
never a credential (issue 14, item 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest_twisted
from twisted.logger import formatEvent
from twisted.web.server import Request

from .harness import FakeUpstream, Harness, start

SECRET = b"Bearer s3cret-t0ken"
BASIC = b"Basic dXNlcjpodW50ZXIy"  # user:hunter2


def tags(request: Request) -> bytes:
    return b'{"name":"library/alpine","tags":["3.20"]}'


@pytest_twisted.async_yield_fixture
async def docxy() -> AsyncIterator[Harness]:
    harness = await start(FakeUpstream())
    harness.upstream.routes[b"/v2/library/alpine/tags/list"] = tags
    yield harness
    await harness.stop()


def lines(events: list[dict[str, object]]) -> list[str]:
    """The access events as the text log shows them."""
    return [formatEvent(event) for event in events]


@pytest_twisted.ensureDeferred
async def test_access_line_names_upstream_ns_and_user_agent(
    docxy: Harness, access_events: list[dict[str, object]]
) -> None:
    reply = await docxy.request(
        b"GET",
        "/v2/alpine/tags/list?ns=docker.io",
        {b"user-agent": [b"containerd/v1.7.24"], b"authorization": [SECRET]},
    )
    assert reply.code == 200
    (line,) = lines(access_events)
    assert "status=200" in line
    assert " upstream=docker.io" in line
    assert ' ns="docker.io"' in line
    assert ' ua="containerd/v1.7.24"' in line
    assert "s3cret" not in line
    # The same facts as fields of their own, for structured (JSON) logs.
    (event,) = access_events
    assert (event["upstream"], event["ns"], event["user_agent"]) == (
        "docker.io",
        "docker.io",
        "containerd/v1.7.24",
    )
    assert "s3cret" not in repr(event)


@pytest_twisted.ensureDeferred
async def test_token_line_names_upstream_never_credentials(
    docxy: Harness, access_events: list[dict[str, object]]
) -> None:
    upstream = docxy.upstream
    upstream.routes[b"/token"] = lambda request: b'{"token":"t0k3n-value"}'
    upstream.routes[b"/v2/"] = _challenge(upstream)
    reply = await docxy.request(
        b"GET",
        "/auth/token?scope=repository:alpine:pull&service=x",
        {b"user-agent": [b"docker/27.5.1 go/go1.22"], b"authorization": [BASIC]},
    )
    assert reply.code == 200
    line = lines(access_events)[-1]
    assert "path=/auth/token" in line and " upstream=docker.io" in line
    assert ' ua="docker/27.5.1 go/go1.22"' in line
    for secret in ("dXNlcjpodW50ZXIy", "hunter2", "t0k3n", "scope="):
        assert secret not in line


@pytest_twisted.ensureDeferred
async def test_hostile_user_agent_cannot_forge_fields_or_lines(
    docxy: Harness, access_events: list[dict[str, object]]
) -> None:
    agent = b'x" status=500 \\ ' + b"a" * 500
    reply = await docxy.request(
        b"GET", '/v2/alpine/tags/list?ns=docker.io"x', {b"user-agent": [agent]}
    )
    assert reply.code == 404  # no such registry; still one honest line
    (line,) = lines(access_events)
    assert "\n" not in line and "status=404" in line
    assert line.count('"') == 4, line  # ns="..." and ua="...", nothing more
    assert ' ua="x? status=500 ? aaa' in line
    assert "a" * 201 not in line


def _challenge(upstream: FakeUpstream) -> Callable[[Request], bytes]:
    def challenge(request: Request) -> bytes:
        request.setResponseCode(401)
        realm = f"{upstream.url}/token"
        request.setHeader(b"www-authenticate", f'Bearer realm="{realm}"'.encode())
        return b"{}"

    return challenge


@pytest_twisted.ensureDeferred
async def test_behind_a_trusted_proxy_the_line_names_the_forwarded_client(
    access_events: list[dict[str, object]],
) -> None:
    """The first field is the TCP peer (the proxy); ``forwarded_for`` is the
    client the trusted proxy named, the address allow-lists judge."""
    harness = await start(FakeUpstream(), {"trusted-proxies": ["127.0.0.1/32"]})
    harness.upstream.routes[b"/v2/library/alpine/tags/list"] = tags
    try:
        forwarded = {b"x-forwarded-for": [b"198.51.100.7, 203.0.113.9"]}
        reply = await harness.request(b"GET", "/v2/alpine/tags/list", forwarded)
        assert reply.code == 200
        plain = await harness.request(b"GET", "/v2/alpine/tags/list")
        assert plain.code == 200
    finally:
        await harness.stop()
    proxied, direct = lines(access_events)
    assert proxied.startswith("127.0.0.1 ")
    assert " forwarded_for=203.0.113.9" in proxied
    assert access_events[0]["forwarded_for"] == "203.0.113.9"
    assert "forwarded_for" not in direct
