"""docxy-prefetch against a scripted mirror, in memory, on a fake clock.

What a client must never accept (bytes that are not their digest, a short
read), what it must not wait for forever (a silent mirror: ``--timeout``
is tested by moving the clock, not by waiting), and how it spreads blobs
over ``--concurrency`` connections.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
from twisted.internet import defer
from twisted.web.server import Request

from docxy.prefetch.cli import parse_options, run
from tests.support.digests import sha256_digest
from tests.support.memory import Held, MemoryNet, Scripted, result

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"the real layer bytes" * 100


def manifest(*blobs: bytes) -> bytes:
    config, *layers = blobs
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": sha256_digest(config), "size": len(config)},
            "layers": [{"digest": sha256_digest(b), "size": len(b)} for b in layers],
        }
    ).encode()


def send(body: bytes, kind: bytes = b"application/json", length: int | None = None):
    def handler(request: Request) -> bytes | int:
        request.setHeader(b"content-type", kind)
        request.setHeader(b"content-length", str(length or len(body)).encode())
        if length is not None and length > len(body):
            request.write(body)
            request.loseConnection()  # fewer bytes than announced
            return b""
        return body

    return handler


def image(*blobs: bytes, name: str = "img") -> Scripted:
    """A mirror with one single-platform image ``<name>:1`` made of ``blobs``."""
    routes = {
        "/v2/": send(b"{}"),
        f"/v2/{name}/manifests/1": send(manifest(*blobs), OCI_MANIFEST.encode()),
    }
    for blob in blobs:
        routes[f"/v2/{name}/blobs/{sha256_digest(blob)}"] = send(blob)
    return Scripted(routes)


def prefetch(net: MemoryNet, *args: str) -> defer.Deferred[int]:
    options = parse_options(["--mirror", "http://mirror.test", *args])
    d = defer.ensureDeferred(run(net.clock, options, agent=net.agent))
    net.pump()
    return d


def test_a_good_image(capsys: pytest.CaptureFixture[str]) -> None:
    net = MemoryNet(image(CONFIG, LAYER))
    assert result(prefetch(net, "img:1")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"img:1: {sha256_digest(manifest(CONFIG, LAYER))} "), out
    assert " single-platform manifests=1 blobs=2 bytes=2037 " in out, out


@pytest.mark.parametrize(
    ("body", "length", "why"),
    [
        (b"X" * 2000, None, "the bytes do not match the digest"),  # whole, wrong
        (LAYER[:1000], 2000, "short read, 1000 of 2000 bytes"),
    ],
)
def test_a_blob_that_is_not_its_digest_fails_the_image(
    capsys: pytest.CaptureFixture[str], body: bytes, length: int | None, why: str
) -> None:
    mirror = image(CONFIG, LAYER)
    mirror.routes[f"/v2/img/blobs/{sha256_digest(LAYER)}"] = send(body, length=length)
    net = MemoryNet(mirror)
    assert result(prefetch(net, "img:1")) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"docxy-prefetch: img:1: blob {sha256_digest(LAYER)}: {why}\n"


def test_a_manifest_that_is_not_its_digest_fails_the_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    wanted = sha256_digest(manifest(CONFIG, LAYER))
    mirror = image(CONFIG, LAYER)
    mirror.routes[f"/v2/img/manifests/{wanted}"] = send(manifest(CONFIG))
    net = MemoryNet(mirror)
    assert result(prefetch(net, f"img@{wanted}")) == 1
    assert capsys.readouterr().err == (
        f"docxy-prefetch: img@{wanted}: manifest {wanted}: "
        f"body does not match {wanted}\n"
    )


def test_a_silent_blob_fails_after_the_timeout_not_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    held = Held()

    def stall(request: Request) -> int:
        request.setHeader(b"content-length", b"2000")
        request.write(LAYER[:300])  # then nothing
        return held(request)

    mirror = image(CONFIG, LAYER)
    mirror.routes[f"/v2/img/blobs/{sha256_digest(LAYER)}"] = stall
    net = MemoryNet(mirror)
    done = prefetch(net, "--timeout", "30", "img:1")
    net.advance(29.9)
    assert not done.called
    net.advance(0.1)
    assert result(done) == 1
    assert capsys.readouterr().err == (
        f"docxy-prefetch: img:1: blob {sha256_digest(LAYER)}: "
        "no data for 30 s after 300 bytes\n"
    )
    assert held.lost, "the stalled connection was left open"


def test_a_mirror_that_never_answers_fails_each_image_after_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    held = Held()
    net = MemoryNet(Scripted({"/v2/": held}))
    done = prefetch(net, "img:1", "other:2")
    net.advance(59)
    assert not done.called
    net.advance(1)
    assert result(done) == 1
    unreachable = "mirror http://mirror.test unreachable: mirror.test: "
    assert capsys.readouterr().err.splitlines() == [
        f"docxy-prefetch: img:1: {unreachable}no response headers in time",
        f"docxy-prefetch: other:2: {unreachable}no response headers in time",
    ]


LAYERS = [f"layer {n}".encode() * 50 for n in range(6)]


def held_blobs(mirror: Scripted) -> Held:
    held = Held()
    for blob in LAYERS:
        mirror.routes[f"/v2/img/blobs/{sha256_digest(blob)}"] = held
    return held


def test_blobs_are_fetched_concurrency_at_a_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = image(CONFIG, *LAYERS)
    held = held_blobs(mirror)
    net = MemoryNet(mirror)
    done = prefetch(net, "--concurrency", "2", "img:1")
    by_path = {f"/v2/img/blobs/{sha256_digest(b)}": b for b in LAYERS}
    answered = 0
    while held.waiting:
        assert len(held.waiting) <= 2
        if answered < len(LAYERS) - 1:
            assert len(held.waiting) == 2, "a free slot was not used"
        held.answer(by_path[held.waiting[0].path.decode()])
        answered += 1
        net.pump()
    assert answered == len(LAYERS)
    assert result(done) == 0, capsys.readouterr().err


def test_the_first_failed_blob_cancels_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = image(CONFIG, *LAYERS)
    held = held_blobs(mirror)
    config = Held()
    mirror.routes[f"/v2/img/blobs/{sha256_digest(CONFIG)}"] = config
    net = MemoryNet(mirror)
    done = prefetch(net, "--concurrency", "3", "img:1")
    assert (len(config.waiting), len(held.waiting)) == (1, 2)

    config.answer(b'{"errors":[{"code":"BLOB_UNKNOWN","message":"gone"}]}', 404)
    net.pump()

    assert result(done) == 1
    assert capsys.readouterr().err == (
        f"docxy-prefetch: img:1: blob {sha256_digest(CONFIG)}: 404 BLOB_UNKNOWN: gone\n"
    )
    assert len(held.lost) == 2  # the two in flight were dropped...
    blob_requests = [p for p in mirror.paths() if "/blobs/" in p]
    assert len(blob_requests) == 3  # ...and the queued ones never asked


class TokenMirror(Scripted):
    """Everything but the realm needs the token the realm issued last."""

    def __init__(self) -> None:
        super().__init__(image(CONFIG, LAYER).routes)
        self.queries: list[dict[str, list[str]]] = []
        self.valid = ""
        self.routes["/token"] = self.token

    def token(self, request: Request) -> bytes:
        self.queries.append(parse_qs(request.uri.decode().partition("?")[2]))
        self.valid = f"t{len(self.queries)}"
        return json.dumps({"token": self.valid}).encode()

    def render(self, request: Request) -> bytes | int:
        wanted = f"Bearer {self.valid}".encode()
        if request.path != b"/token" and request.getHeader(b"authorization") != wanted:
            self.seen.append(request)
            request.setResponseCode(401)
            realm = 'Bearer realm="http://mirror.test/token",service="svc"'
            request.setHeader(b"www-authenticate", realm.encode())
            return b'{"errors":[{"code":"UNAUTHORIZED","message":"authenticate"}]}'
        return super().render(request)


def test_a_token_from_the_challenge_realm_for_the_repository_scope() -> None:
    mirror = TokenMirror()
    assert result(prefetch(MemoryNet(mirror), "img:1")) == 0
    assert mirror.queries == [{"service": ["svc"], "scope": ["repository:img:pull"]}]
    assert mirror.paths().count("/token") == 1


def test_an_expired_token_is_renewed(capsys: pytest.CaptureFixture[str]) -> None:
    mirror = TokenMirror()
    blob = f"/v2/img/blobs/{sha256_digest(LAYER)}"
    serve = mirror.routes[blob]

    def expire(request: Request) -> bytes | int:
        mirror.valid = "t-next"  # the token the client holds has expired
        mirror.routes[blob] = serve
        request.setResponseCode(401)
        request.setHeader(
            b"www-authenticate", b'Bearer realm="http://mirror.test/token"'
        )
        return b"{}"

    mirror.routes[blob] = expire
    assert result(prefetch(MemoryNet(mirror), "img:1")) == 0, capsys.readouterr().err
    assert len(mirror.queries) == 2


def test_concurrent_401s_of_one_expiry_share_one_token_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = TokenMirror()
    blobs = {f"/v2/img/blobs/{sha256_digest(b)}": b for b in LAYERS[:2]}
    mirror.routes.update(image(CONFIG, *LAYERS[:2]).routes)
    renewals = Held()

    def expire(request: Request) -> bytes:
        # The token expires while both blobs are asked for; renewals wait.
        mirror.valid = "t-expired"
        mirror.routes["/token"] = renewals
        for path, blob in blobs.items():
            mirror.routes[path] = send(blob)
        request.setResponseCode(401)
        request.setHeader(
            b"www-authenticate", b'Bearer realm="http://mirror.test/token"'
        )
        return b"{}"

    for path in blobs:
        mirror.routes[path] = expire
    net = MemoryNet(mirror)
    done = prefetch(net, "--concurrency", "3", "img:1")
    assert len(renewals.waiting) == 1, "each 401 asked the realm for a token"

    mirror.valid = "t-renewed"
    renewals.answer(b'{"token": "t-renewed"}')
    net.pump()
    assert result(done) == 0, capsys.readouterr().err


def test_an_https_mirror_naming_a_plain_http_realm_never_gets_the_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = TokenMirror()  # its challenges name http://mirror.test/token
    net = MemoryNet(mirror)
    options = parse_options(
        ["--mirror", "https://mirror.test", "--user", "alice:pw", "img:1"]
    )
    d = defer.ensureDeferred(run(net.clock, options, agent=net.agent))
    net.pump()
    assert result(d) != 0
    assert mirror.queries == []  # nothing reached the realm
    assert "plain http" in capsys.readouterr().err
