"""Who may use the mirror: allow-lists, Docxy's accounts and tokens, a rate
per client, against a scripted upstream over real loopback sockets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from twisted.web.server import Request

from .harness import FakeUpstream, Harness, Reply, error_of, start

MANIFEST = b'{"schemaVersion":2}'
XFF = b"x-forwarded-for"


def serve_manifest(request: Request) -> bytes:
    request.setHeader(b"content-type", b"application/vnd.oci.image.manifest.v1+json")
    return MANIFEST


def open_upstream() -> FakeUpstream:
    """A registry without a token service: /v2/ is open."""
    upstream = FakeUpstream()
    upstream.routes[b"/v2/"] = lambda request: b"{}"
    for name in (b"app", b"other"):
        upstream.routes[b"/v2/library/" + name + b"/manifests/1"] = serve_manifest
    return upstream


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"# mirror users\nalice:{hashed}\n")
    return path


def basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    pair = base64.b64encode(f"{user}:{password}".encode())
    return {b"authorization": [b"Basic " + pair]}


def bearer(token: str) -> dict[bytes, list[bytes]]:
    return {b"authorization": [f"Bearer {token}".encode()]}


def challenge_of(reply: Reply) -> bytes:
    values = reply.headers.getRawHeaders(b"www-authenticate") or [b""]
    return values[0]


async def from_address(docxy: Harness, source: str, path: str) -> Reply:
    return await docxy.request(b"GET", path, source=source)


@pytest_twisted.ensureDeferred
async def test_allow_list_refuses_other_addresses_in_the_envelope() -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"allow": ["127.0.0.1/32", "fd00::/8"]})
    try:
        refused = await from_address(docxy, "127.0.0.2", "/v2/app/manifests/1")
        assert refused.code == 403
        assert error_of(refused)["code"] == "DENIED"
        health = await from_address(docxy, "127.0.0.2", "/health")
        assert health.code == 200  # probes stay open
        served = await from_address(docxy, "127.0.0.1", "/v2/app/manifests/1")
        assert served.code == 200 and served.body == MANIFEST
    finally:
        await docxy.stop()
    assert len(upstream.seen) == 1  # the refused request cost upstream nothing


async def manifest_via(docxy: Harness, header: bytes, value: bytes) -> Reply:
    """The manifest, asked with one header as a proxy in front would send it."""
    return await docxy.request(b"GET", "/v2/app/manifests/1", {header: [value]})


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    upstream = open_upstream()
    docxy = await start(
        upstream, {"allow": ["10.1.0.0/16"], "trusted-proxies": ["127.0.0.1"]}
    )
    try:
        inside = await manifest_via(docxy, XFF, b"192.0.2.9, 10.1.2.3")
        assert inside.code == 200
        reply = await manifest_via(docxy, XFF, b"10.1.2.3, 192.0.2.9")
        assert reply.code == 403
        assert error_of(reply)["detail"] == {"address": "192.0.2.9"}
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_garbled_x_forwarded_for_from_a_trusted_proxy_does_not_fail_open() -> (
    None
):
    # The balancer sits inside the allowed networks, as it usually does. On
    # main a hop it could not read made the request the balancer's own:
    # admitted, though it named no client at all.
    upstream = open_upstream()
    docxy = await start(
        upstream,
        {"allow": ["10.1.0.0/16", "127.0.0.1"], "trusted-proxies": ["127.0.0.1"]},
    )
    try:
        for garbled in (b"garbage", b"", b"10.1.2.3:port", b"[2001:db8::1"):
            reply = await manifest_via(docxy, XFF, garbled)
            assert reply.code == 400, garbled
            assert error_of(reply)["code"] == "DENIED"
        reply = await manifest_via(docxy, b"forwarded", b"for=10.1.2.3")
        assert reply.code == 400
        reply = await manifest_via(docxy, XFF, b"10.1.2.3:40000")
        assert reply.code == 200
    finally:
        await docxy.stop()
    assert [s.uri for s in upstream.seen] == [b"/v2/library/app/manifests/1"]


@pytest_twisted.ensureDeferred
async def test_an_untrusted_peer_cannot_claim_an_address() -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"allow": ["10.1.0.0/16"]})
    try:
        claimed = {b"x-forwarded-for": [b"10.1.2.3"]}
        reply = await docxy.request(b"GET", "/v2/app/manifests/1", claimed)
        assert reply.code == 403
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_accounts_log_in_get_docxys_token_bound_to_the_repository(
    htpasswd: Path,
) -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"htpasswd": str(htpasswd)})
    try:
        ping = await docxy.request(b"GET", "/v2/")
        assert ping.code == 401
        challenge = ping.headers.getRawHeaders(b"www-authenticate")
        assert challenge == [
            b'Bearer realm="https://mirror.example/auth/token",service="docxy"'
        ]
        repo = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert repo.code == 401
        assert b'scope="repository:app:pull"' in challenge_of(repo)
        assert error_of(repo)["code"] == "UNAUTHORIZED"

        path = "/auth/token?service=docxy&scope=repository:app:pull"
        missing = await docxy.request(b"GET", path)
        assert missing.code == 401
        assert missing.headers.getRawHeaders(b"www-authenticate") == [
            b'Basic realm="docxy"'
        ]
        wrong = await docxy.request(b"GET", path, basic("alice", "wrong"))
        assert wrong.code == 401
        nobody = await docxy.request(b"GET", path, basic("mallory", "right"))
        assert nobody.code == 401
        for refused in (missing, wrong, nobody):
            assert error_of(refused)["code"] == "UNAUTHORIZED"

        granted = await docxy.request(b"GET", path, basic("alice", "right"))
        assert granted.code == 200
        token = json.loads(granted.body)["token"]
        assert (await docxy.request(b"GET", "/v2/", bearer(token))).code == 200
        reply = await docxy.request(b"GET", "/v2/app/manifests/1", bearer(token))
        assert reply.code == 200 and reply.body == MANIFEST
        other = await docxy.request(b"GET", "/v2/other/manifests/1", bearer(token))
        assert other.code == 401
        assert b'error="insufficient_scope"' in challenge_of(other)
        forged = await docxy.request(
            b"GET", "/v2/app/manifests/1", bearer(token[:-4] + "AAAA")
        )
        assert forged.code == 401
    finally:
        await docxy.stop()
    # Neither the client's password nor Docxy's token ever went upstream.
    for seen in upstream.seen:
        assert not seen.headers.hasHeader(b"authorization"), seen.uri
    assert [s.uri for s in upstream.seen if b"manifests" in s.uri] == [
        b"/v2/library/app/manifests/1"
    ]


@pytest_twisted.ensureDeferred
async def test_oauth_password_grant_as_containerd_posts_it(htpasswd: Path) -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"htpasswd": str(htpasswd)})
    try:
        form = (
            b"grant_type=password&username=alice&password=right&service=docxy"
            b"&scope=repository%3Aapp%3Apull&client_id=ctr"
        )
        posted = await docxy.post_form("/auth/token", form)
        assert posted.code == 200, posted.body
        token = json.loads(posted.body)["access_token"]
        reply = await docxy.request(b"GET", "/v2/app/manifests/1", bearer(token))
        assert reply.code == 200
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_anonymous_true_lets_clients_without_an_account_pull(
    htpasswd: Path,
) -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"htpasswd": str(htpasswd), "anonymous": True})
    try:
        token = await docxy.request(b"GET", "/auth/token?scope=repository:app:pull")
        assert token.code == 200
        reply = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert reply.code == 200
        wrong = await docxy.request(b"GET", "/auth/token", basic("alice", "wrong"))
        assert wrong.code == 401
    finally:
        await docxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_greedy_client_gets_429_with_retry_after() -> None:
    upstream = open_upstream()
    docxy = await start(upstream, {"client-rate": "0.01", "client-burst": "2"})
    try:
        codes = [
            (await docxy.request(b"GET", "/v2/app/manifests/1")).code for _ in range(2)
        ]
        assert codes == [200, 200]
        third = await docxy.request(b"GET", "/v2/app/manifests/1")
        assert third.code == 429
        assert error_of(third)["code"] == "TOOMANYREQUESTS"
        retry = third.headers.getRawHeaders(b"retry-after")
        assert retry is not None and int(retry[0]) > 0
        other = await from_address(docxy, "127.0.0.2", "/v2/app/manifests/1")
        assert other.code == 200  # another client has its own bucket
    finally:
        await docxy.stop()
