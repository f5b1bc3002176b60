"""The forwarding rules, against a scripted upstream over real loopback sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.web.server import Request

from .harness import FakeUpstream, Harness, listen, never_answers, start

DIGEST = "sha256:" + "ab" * 32
BLOB = bytes(range(256)) * 64
PING_REALM = "https://mirror.example/auth/token"
PUBLIC_REALM = "https://mirror.example/auth/docker.io/token"


def bearer(realm: str, **params: str) -> bytes:
    extra = "".join(f',{k}="{v}"' for k, v in params.items())
    return f'Bearer realm="{realm}",service="test-svc"{extra}'.encode()


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest_twisted.async_yield_fixture
async def docxy(upstream: FakeUpstream) -> AsyncIterator[Harness]:
    harness = await start(upstream)

    def challenge(request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", bearer(f"{upstream.url}/token"))
        request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
        return b'{"errors":[{"code":"UNAUTHORIZED"}]}'

    upstream.routes.setdefault(b"/v2/", challenge)
    yield harness
    await harness.stop()


def errors_of(body: bytes) -> list[dict[str, object]]:
    errors: list[dict[str, object]] = json.loads(body)["errors"]
    assert set(errors[0]) == {"code", "message", "detail"}
    return errors


@pytest_twisted.ensureDeferred
async def test_ping_challenge_points_at_configured_realm(docxy: Harness) -> None:
    reply = await docxy.request(b"GET", "/v2/", {b"host": [b"evil.example"]})
    assert reply.code == 401
    assert reply.headers.getRawHeaders(b"www-authenticate") == [
        f'Bearer realm="{PING_REALM}",service="test-svc"'.encode()
    ]
    assert reply.headers.getRawHeaders(b"docker-distribution-api-version") == [
        b"registry/2.0"
    ]


@pytest_twisted.ensureDeferred
async def test_ping_forwards_authorization(docxy: Harness) -> None:
    docxy.upstream.routes[b"/v2/"] = lambda request: b"{}"
    reply = await docxy.request(b"GET", "/v2/", {b"authorization": [b"Bearer abc"]})
    assert reply.code == 200
    assert docxy.upstream.seen[-1].headers.getRawHeaders(b"authorization") == [
        b"Bearer abc"
    ]


@pytest_twisted.ensureDeferred
async def test_manifest_challenge_keeps_scope_and_error(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    def denied(request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(
            b"www-authenticate",
            bearer(
                f"{upstream.url}/token",
                scope="repository:library/alpine:pull",
                error="insufficient_scope",
            ),
        )
        return b""

    upstream.routes[b"/v2/library/alpine/manifests/3.20"] = denied
    reply = await docxy.request(b"HEAD", "/v2/alpine/manifests/3.20?ns=docker.io")
    assert reply.code == 401
    assert reply.headers.getRawHeaders(b"www-authenticate") == [
        (
            f'Bearer realm="{PUBLIC_REALM}",service="test-svc",'
            'scope="repository:library/alpine:pull",error="insufficient_scope"'
        ).encode()
    ]
    seen = upstream.seen[-1]
    assert (seen.method, seen.uri) == (b"HEAD", b"/v2/library/alpine/manifests/3.20")


def token_endpoint(request: Request) -> bytes:
    request.setHeader(b"content-type", b"application/json; charset=weird")
    request.setResponseCode(200)
    return b'{"token": "t0k", "expires_in": 300}'


@pytest_twisted.ensureDeferred
async def test_token_get_forwards_params_in_order(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    upstream.routes[b"/token"] = token_endpoint
    query = (
        "scope=repository:alpine:pull&service=spoofed&scope=repository:u/x:pull"
        "&account=bob&offline_token=true&client_id=docker"
    )
    reply = await docxy.request(
        b"GET", f"/auth/token?{query}", {b"authorization": [b"Basic Ym9iOnB3"]}
    )
    assert (reply.code, reply.body) == (200, b'{"token": "t0k", "expires_in": 300}')
    assert reply.headers.getRawHeaders(b"content-type") == [
        b"application/json; charset=weird"
    ]
    seen = upstream.seen[-1]
    assert seen.uri.startswith(b"/token?")
    assert parse_qsl(urlsplit(seen.uri.decode()).query) == [
        ("scope", "repository:library/alpine:pull"),
        ("service", "test-svc"),
        ("scope", "repository:u/x:pull"),
        ("account", "bob"),
        ("offline_token", "true"),
        ("client_id", "docker"),
    ]
    assert seen.headers.getRawHeaders(b"authorization") == [b"Basic Ym9iOnB3"]


@pytest_twisted.ensureDeferred
async def test_token_without_scope_for_docker_login(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    upstream.routes[b"/token"] = token_endpoint
    reply = await docxy.request(
        b"GET", "/auth/token?account=bob&client_id=docker&offline_token=true"
    )
    assert reply.code == 200
    params = parse_qsl(urlsplit(upstream.seen[-1].uri.decode()).query)
    assert params[0] == ("service", "test-svc")
    assert [k for k, _ in params] == [
        "service",
        "account",
        "client_id",
        "offline_token",
    ]


@pytest_twisted.ensureDeferred
async def test_token_post_form(docxy: Harness, upstream: FakeUpstream) -> None:
    upstream.routes[b"/token"] = token_endpoint

    form = (
        b"grant_type=password&username=bob&password=pw"
        b"&scope=repository%3Aalpine%3Apull&service=x&client_id=containerd"
    )
    posted = await docxy.post_form("/auth/token", form)
    assert posted.code == 200
    seen = upstream.seen[-1]
    assert seen.method == b"POST"
    assert parse_qsl(seen.body.decode()) == [
        ("grant_type", "password"),
        ("username", "bob"),
        ("password", "pw"),
        ("scope", "repository:library/alpine:pull"),
        ("service", "test-svc"),
        ("client_id", "containerd"),
    ]


@pytest_twisted.ensureDeferred
async def test_token_post_must_be_a_form(docxy: Harness) -> None:
    reply = await docxy.request(b"POST", "/auth/token")
    assert reply.code == 415
    assert errors_of(reply.body)[0]["code"] == "UNSUPPORTED"


def manifest(request: Request) -> bytes:
    body = b'{"schemaVersion":2}'
    request.setHeader(b"content-type", b"application/vnd.oci.image.manifest.v1+json")
    request.setHeader(b"docker-content-digest", DIGEST.encode())
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
    return body


@pytest_twisted.ensureDeferred
async def test_head_carries_the_headers_a_get_would(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    upstream.routes[b"/v2/library/alpine/manifests/3.20"] = manifest
    get = await docxy.request(b"GET", "/v2/alpine/manifests/3.20")
    head = await docxy.request(b"HEAD", "/v2/alpine/manifests/3.20")
    assert get.body == b'{"schemaVersion":2}'
    for name in (b"content-type", b"docker-content-digest"):
        assert head.headers.getRawHeaders(name) == get.headers.getRawHeaders(name)
    assert get.length == 19  # a fixed length, not chunked
    assert head.headers.getRawHeaders(b"content-length") == [b"19"]
    assert [s.method for s in upstream.seen[-2:]] == [b"GET", b"HEAD"]


@pytest_twisted.ensureDeferred
async def test_accept_values_forwarded_exactly(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    upstream.routes[b"/v2/library/alpine/manifests/3.20"] = manifest
    accepts = [b"application/vnd.oci.image.index.v1+json", b"a/b, c/d;q=0.5", b"*/*"]
    await docxy.request(b"GET", "/v2/alpine/manifests/3.20", {b"accept": accepts})
    assert upstream.seen[-1].headers.getRawHeaders(b"accept") == accepts


async def two_origins(docxy: Harness, upstream: FakeUpstream) -> FakeUpstream:
    cdn = FakeUpstream()
    cdn.port = await listen(cdn)
    docxy.extra.append(cdn.port)

    def blob(request: Request) -> bytes:
        rng = request.getHeader(b"range")
        if rng == b"bytes=0-0":
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes 0-0/%d" % len(BLOB))
            return BLOB[:1]
        if request.method == b"HEAD":
            return b""  # this CDN gives no length on HEAD
        return BLOB

    cdn.routes[b"/cdn/blob"] = blob
    return cdn


@pytest_twisted.ensureDeferred
async def test_cross_origin_redirect_is_followed_without_credentials(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    cdn = await two_origins(docxy, upstream)

    def redirect(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", f"{cdn.url}/cdn/blob?sig=1".encode())
        return b"redirecting"

    upstream.routes[f"/v2/library/alpine/blobs/{DIGEST}".encode()] = redirect
    reply = await docxy.request(
        b"GET",
        f"/v2/alpine/blobs/{DIGEST}",
        {b"authorization": [b"Bearer secret"], b"if-none-match": [b'"x"']},
    )
    assert (reply.code, reply.body) == (200, BLOB)
    assert not reply.headers.hasHeader(b"location")
    assert reply.length == len(BLOB)
    assert reply.headers.getRawHeaders(b"docker-content-digest") == [DIGEST.encode()]
    assert upstream.seen[-1].headers.getRawHeaders(b"authorization") == [
        b"Bearer secret"
    ]
    hop = cdn.seen[-1]
    assert hop.uri == b"/cdn/blob?sig=1"
    assert not hop.headers.hasHeader(b"authorization")
    assert hop.headers.getRawHeaders(b"if-none-match") == [b'"x"']


@pytest_twisted.ensureDeferred
async def test_range_survives_redirects(docxy: Harness, upstream: FakeUpstream) -> None:
    def partial(request: Request) -> bytes:
        assert request.getHeader(b"range") == b"bytes=10-19"
        request.setResponseCode(206)
        request.setHeader(b"content-range", b"bytes 10-19/%d" % len(BLOB))
        return BLOB[10:20]

    def redirect(request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"/cdn/partial")
        return b""

    upstream.routes[b"/cdn/partial"] = partial
    upstream.routes[f"/v2/library/alpine/blobs/{DIGEST}".encode()] = redirect
    reply = await docxy.request(
        b"GET",
        f"/v2/alpine/blobs/{DIGEST}",
        {b"range": [b"bytes=10-19"], b"authorization": [b"Bearer t"]},
    )
    assert (reply.code, reply.body) == (206, BLOB[10:20])
    assert reply.headers.getRawHeaders(b"content-range") == [
        b"bytes 10-19/%d" % len(BLOB)
    ]
    # Same origin: the client's credentials are still sent.
    assert upstream.seen[-1].headers.getRawHeaders(b"authorization") == [b"Bearer t"]


@pytest_twisted.ensureDeferred
async def test_redirect_loop_is_a_502(docxy: Harness, upstream: FakeUpstream) -> None:
    def loop(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", request.uri)
        return b""

    path = f"/v2/library/alpine/blobs/{DIGEST}"
    upstream.routes[path.encode()] = loop
    reply = await docxy.request(b"GET", f"/v2/alpine/blobs/{DIGEST}")
    assert reply.code == 502
    assert errors_of(reply.body)[0]["code"] == "UNAVAILABLE"
    assert len([s for s in upstream.seen if s.uri == path.encode()]) == 6


@pytest_twisted.ensureDeferred
async def test_blob_head_without_length_is_probed(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    cdn = await two_origins(docxy, upstream)

    def redirect(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", f"{cdn.url}/cdn/blob".encode())
        return b""

    upstream.routes[f"/v2/library/alpine/blobs/{DIGEST}".encode()] = redirect
    reply = await docxy.request(b"HEAD", f"/v2/alpine/blobs/{DIGEST}")
    assert reply.code == 200
    assert reply.headers.getRawHeaders(b"content-length") == [b"%d" % len(BLOB)]
    assert reply.headers.getRawHeaders(b"docker-content-digest") == [DIGEST.encode()]
    assert [(s.method, s.headers.getRawHeaders(b"range")) for s in cdn.seen] == [
        (b"HEAD", None),
        (b"GET", [b"bytes=0-0"]),
    ]


@pytest_twisted.ensureDeferred
async def test_mirror_params_stripped_others_kept(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    upstream.routes[b"/v2/library/alpine/tags/list"] = lambda r: b'{"tags":[]}'
    reply = await docxy.request(
        b"GET", "/v2/alpine/tags/list?n=10&ns=docker.io&last=a%2Bb"
    )
    assert reply.code == 200
    assert upstream.seen[-1].uri == b"/v2/library/alpine/tags/list?n=10&last=a%2Bb"


@pytest_twisted.ensureDeferred
async def test_upstream_429_is_answered_in_the_envelope_with_its_headers(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    def limited(request: Request) -> bytes:
        request.setResponseCode(429)
        request.setHeader(b"ratelimit-remaining", b"0;w=21600")
        request.setHeader(b"retry-after", b"120")
        request.setHeader(b"x-internal", b"upstream-only")
        request.setHeader(b"content-type", b"text/html")
        return b"<html>slow down</html>"

    upstream.routes[b"/v2/library/alpine/manifests/1"] = limited
    upstream.routes[b"/v2/library/alpine/blobs/" + DIGEST.encode()] = limited
    for method, path in [
        (b"GET", "/v2/alpine/manifests/1"),
        (b"GET", f"/v2/alpine/blobs/{DIGEST}"),
        (b"HEAD", f"/v2/alpine/blobs/{DIGEST}"),
    ]:
        reply = await docxy.request(method, path)
        assert reply.code == 429
        assert reply.headers.getRawHeaders(b"retry-after") == [b"120"]
        assert reply.headers.getRawHeaders(b"ratelimit-remaining") == [b"0;w=21600"]
        assert not reply.headers.hasHeader(b"x-internal")
        if method == b"GET":
            assert errors_of(reply.body)[0]["code"] == "TOOMANYREQUESTS"


@pytest_twisted.ensureDeferred
async def test_invalid_requests_never_reach_upstream(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    cases = [
        (b"GET", "/v2/a/../b/manifests/x", 400, "NAME_INVALID"),
        (b"GET", "/v2/a%2Fb/manifests/x", 400, "NAME_INVALID"),
        (b"GET", "/v2/alpine/blobs/sha256:zz", 400, "DIGEST_INVALID"),
        (b"PUT", "/v2/alpine/manifests/x", 405, "UNSUPPORTED"),
        (b"DELETE", f"/v2/alpine/blobs/{DIGEST}", 405, "UNSUPPORTED"),
        (b"POST", "/v2/alpine/blobs/uploads/", 405, "UNSUPPORTED"),
        (b"GET", "/v2/_catalog", 404, "NOT_FOUND"),
        (b"GET", "/http://evil.example/x", 404, "NOT_FOUND"),
        (b"GET", "/", 404, "NOT_FOUND"),
    ]
    for method, path, status, code in cases:
        reply = await docxy.request(method, path)
        assert upstream.seen == [], path
        assert (reply.code, errors_of(reply.body)[0]["code"]) == (status, code), path
        assert reply.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_health_makes_no_upstream_call(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    reply = await docxy.request(b"GET", "/health")
    assert reply.code == 200
    assert json.loads(reply.body)["status"] == "ok"
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_unreachable_upstream_is_a_502_without_internals(
    upstream: FakeUpstream,
) -> None:
    dead = await listen(FakeUpstream())
    dead_url = f"http://127.0.0.1:{dead.getHost().port}"
    await dead.stopListening()
    docxy = await start(upstream, {"upstream": dead_url})
    try:
        reply = await docxy.request(b"GET", f"/v2/alpine/blobs/{DIGEST}")
        assert reply.code == 502
        error = errors_of(reply.body)[0]
        assert error["code"] == "UNAVAILABLE"
        assert "Traceback" not in reply.body.decode()
        assert "Error" not in str(error["message"])
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_header_timeout_is_a_504(upstream: FakeUpstream) -> None:
    upstream.routes[b"/v2/library/alpine/manifests/slow"] = never_answers
    docxy = await start(upstream, {"header-timeout": "0.2"})
    try:
        reply = await docxy.request(b"GET", "/v2/alpine/manifests/slow")
        assert reply.code == 504
        assert errors_of(reply.body)[0]["code"] == "UNAVAILABLE"
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_tls_handshake_on_plain_port_is_refused_at_once(docxy: Harness) -> None:
    """podman/skopeo try https first on an insecure mirror; they must not hang."""
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import connectionDone
    from twisted.python.failure import Failure

    class Hello(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.closed: defer.Deferred[bytes] = defer.Deferred()

        def connectionMade(self) -> None:
            # The start of a TLS ClientHello: no line break anywhere.
            assert self.transport is not None
            self.transport.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8)

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            self.closed.callback(self.data)

    hello = Hello()
    port = docxy.docxy_port.getHost().port
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(_Once(hello))
    # Without the fix the connection just hangs: bound the wait so it fails.
    answer = await hello.closed.addTimeout(30, reactor)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


class _Once(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_instance


@pytest_twisted.ensureDeferred
async def test_https_redirect_keeps_health_and_acme_on_http(
    upstream: FakeUpstream,
) -> None:
    from docxy.tls.http01 import HTTP01

    docxy = await start(
        upstream, {"public-url": "https://mirror.example", "https-redirect": True}
    )
    HTTP01.add("tok-1", "tok-1.thumb")
    try:
        moved = await docxy.request(b"GET", "/v2/alpine/manifests/1?ns=docker.io")
        assert moved.code == 301
        assert moved.headers.getRawHeaders(b"location") == [
            b"https://mirror.example/v2/alpine/manifests/1?ns=docker.io"
        ]
        assert (await docxy.request(b"GET", "/health")).code == 200
        challenge = await docxy.request(b"GET", "/.well-known/acme-challenge/tok-1")
        assert (challenge.code, challenge.body) == (200, b"tok-1.thumb")
        missing = await docxy.request(b"GET", "/.well-known/acme-challenge/other")
        assert missing.code == 404
        assert upstream.seen == []
    finally:
        HTTP01.remove("tok-1")
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_https_redirect_is_never_an_open_redirect(upstream: FakeUpstream) -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import connectionDone
    from twisted.python.failure import Failure

    docxy = await start(
        upstream, {"public-url": "https://mirror.example", "https-redirect": True}
    )

    class Raw(Protocol):
        def __init__(self, line: bytes) -> None:
            self.line, self.data = line, b""
            self.closed: defer.Deferred[bytes] = defer.Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(
                self.line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
            )

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            self.closed.callback(self.data)

    try:
        for line in (
            b"GET @evil.example/v2/ HTTP/1.1",
            b"GET //evil.example/ HTTP/1.1",
        ):
            raw = Raw(line)
            port = docxy.docxy_port.getHost().port
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(_Once(raw))
            answer = await raw.closed.addTimeout(30, reactor)
            assert b"evil.example" not in answer.split(b"\r\n\r\n")[0], answer
    finally:
        await docxy.stop()
