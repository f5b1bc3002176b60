"""Manifest caching against a scripted upstream: Accept, 429, bad bytes, joins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET, Request

from tests.support.digests import sha256_digest

from .harness import FakeUpstream, Harness, Reply, start, until

OCI = b"application/vnd.oci.image.manifest.v1+json"
DOCKER = b"application/vnd.docker.distribution.manifest.v2+json"
BODIES = {OCI: b'{"schemaVersion":2,"mediaType":"oci"}', DOCKER: b'{"schemaVersion":2}'}


class Manifests:
    """A tag whose manifest depends on Accept; by digest too; can be broken."""

    def __init__(self) -> None:
        self.status = 200
        self.gets = 0
        self.corrupt = False

    def __call__(self, request: Request) -> bytes:
        if self.status != 200:
            request.setResponseCode(self.status)
            return b""
        reference = request.path.rsplit(b"/", 1)[1]
        accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", []))
        kind = OCI if OCI in accept else DOCKER
        for media, body in BODIES.items():
            if reference == sha256_digest(body).encode():
                kind = media
        body = BODIES[kind]
        request.setHeader(b"content-type", kind)
        request.setHeader(b"docker-content-digest", sha256_digest(body).encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method == b"HEAD":
            return b""
        self.gets += 1
        return body + (b" " if self.corrupt else b"")


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def manifests(upstream: FakeUpstream) -> Manifests:
    handler = Manifests()
    upstream.routes[b"/v2/library/app/manifests/1"] = handler
    for body in BODIES.values():
        path = f"/v2/library/app/manifests/{sha256_digest(body)}"
        upstream.routes[path.encode()] = handler
    return handler


@pytest_twisted.async_yield_fixture
async def docxy(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await start(
        upstream, {"cache-dir": str(tmp_path / "c"), "cache-freshness": "0.001"}
    )
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_tag_entries_depend_on_accept(
    docxy: Harness, manifests: Manifests
) -> None:
    for media in (OCI, DOCKER, OCI, DOCKER):
        reply = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [media]})
        assert reply.body == BODIES[media]
        assert reply.headers.getRawHeaders(b"content-type") == [media]
    assert manifests.gets == 2  # one per Accept set; then revalidated by HEAD


@pytest_twisted.ensureDeferred
async def test_429_and_5xx_serve_the_last_known_manifest(
    docxy: Harness, manifests: Manifests
) -> None:
    first = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [OCI]})
    for status in (429, 503):
        manifests.status = status
        stale = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [OCI]})
        assert (stale.code, stale.body) == (200, first.body)
    assert docxy.cache.counters.stale_serves == 2


@pytest_twisted.ensureDeferred
async def test_unknown_tag_when_upstream_fails_is_the_upstreams_answer(
    docxy: Harness, manifests: Manifests
) -> None:
    manifests.status = 503
    reply = await docxy.request(b"GET", "/v2/app/manifests/1")
    assert reply.code == 503


@pytest_twisted.ensureDeferred
async def test_manifest_bytes_that_do_not_match_are_refused(
    docxy: Harness, manifests: Manifests
) -> None:
    manifests.corrupt = True
    reply = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [OCI]})
    assert reply.code == 502
    assert b"MANIFEST_INVALID" in reply.body
    assert docxy.cache.counters.digest_mismatches == 1
    manifests.corrupt = False
    healed = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [OCI]})
    assert healed.body == BODIES[OCI]


@pytest_twisted.ensureDeferred
async def test_head_on_a_cached_manifest_answers_from_cache(
    docxy: Harness, manifests: Manifests, upstream: FakeUpstream
) -> None:
    by_digest = f"/v2/app/manifests/{sha256_digest(BODIES[DOCKER])}"
    await docxy.request(b"GET", by_digest)
    seen = len(upstream.seen)
    head = await docxy.request(b"HEAD", by_digest)
    assert head.headers.getRawHeaders(b"content-length") == [
        b"%d" % len(BODIES[DOCKER])
    ]
    # Only the access check's HEAD may reach upstream, never a GET.
    assert all(s.method != b"GET" or b"/token" in s.uri for s in upstream.seen[seen:])


# --- concurrent misses: one upstream GET ----------------------------------------

INDEX = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}'
INDEX_TYPE = b"application/vnd.oci.image.index.v1+json"
INDEX_DIGEST = sha256_digest(INDEX)
INDEX_PATH = f"/v2/app/manifests/{INDEX_DIGEST}"


class HeldManifest:
    """One manifest by digest; its first GET waits for :meth:`answer_first`.

    ``allowed`` decides by the ``Authorization`` sent (GET and HEAD alike);
    a refusal is a 401 with a challenge, as a registry answers.
    """

    def __init__(self) -> None:
        self.gets: list[bytes | None] = []  # the Authorization of each GET
        self.first: Request | None = None
        self.allowed: Callable[[bytes | None], bool] = lambda auth: True

    def __call__(self, request: Request) -> bytes | int:
        auth = request.getHeader(b"authorization")
        if request.method == b"GET":
            self.gets.append(auth)
            if len(self.gets) == 1:
                self.first = request
                return NOT_DONE_YET
        return self._answer(request, 200 if self.allowed(auth) else 401)

    def _answer(self, request: Request, code: int, body: bytes = INDEX) -> bytes:
        request.setResponseCode(code)
        if code == 401:
            realm = f"http://{(request.getHeader(b'host') or b'').decode()}/token"
            request.setHeader(b"www-authenticate", f'Bearer realm="{realm}"'.encode())
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}'
        elif code == 200:
            request.setHeader(b"content-type", INDEX_TYPE)
            request.setHeader(b"docker-content-digest", INDEX_DIGEST.encode())
        else:
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"down"}]}'
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    def answer_first(self, code: int, body: bytes = INDEX) -> None:
        assert self.first is not None
        self.first.write(self._answer(self.first, code, body))
        self.first.finish()


@pytest.fixture
def held(upstream: FakeUpstream) -> HeldManifest:
    handler = HeldManifest()
    upstream.routes[f"/v2/library/app/manifests/{INDEX_DIGEST}".encode()] = handler
    return handler


def get(docxy: Harness, auth: bytes | None = None) -> defer.Deferred[Reply]:
    headers = {b"authorization": [auth]} if auth else {}
    return defer.ensureDeferred(docxy.request(b"GET", INDEX_PATH, headers))


async def first_and_joiners(
    docxy: Harness, held: HeldManifest, first: bytes | None, *joiners: bytes | None
) -> tuple[defer.Deferred[Reply], list[defer.Deferred[Reply]]]:
    """The first client's GET in flight upstream, then joiners waiting on it."""
    counters = docxy.cache.counters
    leader = get(docxy, first)
    await until(lambda: held.first is not None, "the first upstream GET")
    waiting = [get(docxy, auth) for auth in joiners]
    await until(lambda: counters.joined_fills == len(joiners), "the joiners")
    return leader, waiting


@pytest_twisted.ensureDeferred
async def test_concurrent_misses_of_a_manifest_make_one_upstream_get(
    docxy: Harness, held: HeldManifest
) -> None:
    leader, joiners = await first_and_joiners(docxy, held, None, *[None] * 4)
    held.answer_first(200)
    replies: list[Reply] = await defer.gatherResults([leader, *joiners])
    for reply in replies:
        assert (reply.code, reply.body) == (200, INDEX)
        assert reply.headers.getRawHeaders(b"content-type") == [INDEX_TYPE]
        assert reply.headers.getRawHeaders(b"docker-content-digest") == [
            INDEX_DIGEST.encode()
        ]
    assert len(held.gets) == 1
    counters = docxy.cache.counters
    assert (counters.misses, counters.joined_fills) == (1, 4)


# (the first client's credentials, the upstream's answer to them, what it gets)
FAILURES = {
    "refused for its credentials": (b"Bearer stale", 401, INDEX, 401),
    "upstream error": (b"Bearer ok", 503, INDEX, 503),
    "bytes not matching": (b"Bearer ok", 200, INDEX + b" ", 502),
}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_joiners_of_a_failed_get_fetch_their_own(
    docxy: Harness, held: HeldManifest, failure: str
) -> None:
    """The first client's failure (the upstream's refusal of *its*
    credentials above all) is never handed to the clients that joined it."""
    first, code, body, answered = FAILURES[failure]
    held.allowed = lambda auth: auth == b"Bearer ok"
    leader, joiners = await first_and_joiners(docxy, held, first, b"Bearer ok")
    held.answer_first(code, body)
    refused = await leader
    assert refused.code == answered
    assert INDEX not in refused.body
    (reply,) = await defer.gatherResults(joiners)
    assert (reply.code, reply.body) == (200, INDEX)
    assert held.gets == [first, b"Bearer ok"]  # the joiner's own GET


@pytest_twisted.ensureDeferred
async def test_a_joiner_the_upstream_refuses_gets_its_refusal_not_the_bytes(
    docxy: Harness, held: HeldManifest
) -> None:
    held.allowed = lambda auth: auth == b"Bearer ok"
    leader, joiners = await first_and_joiners(
        docxy, held, b"Bearer ok", None, b"Bearer other"
    )
    held.answer_first(200)
    assert (await leader).body == INDEX
    for reply in await defer.gatherResults(joiners):
        assert reply.code == 401
        assert b"UNAUTHORIZED" in reply.body and INDEX not in reply.body
    assert docxy.cache.counters.denied == 2


@pytest_twisted.ensureDeferred
async def test_the_get_lands_when_the_first_client_leaves(
    docxy: Harness, held: HeldManifest
) -> None:
    leader, joiners = await first_and_joiners(docxy, held, None, None)
    leader.cancel()  # its client goes away while the upstream has not answered
    with pytest.raises(Exception):  # noqa: B017 (cancelled, as Agent reports it)
        await leader
    held.answer_first(200)
    (reply,) = await defer.gatherResults(joiners)
    assert (reply.code, reply.body) == (200, INDEX)
    stored = await docxy.cache.manifests.store.get(INDEX_DIGEST)
    assert stored == (INDEX, INDEX_TYPE)
    assert len(held.gets) == 1
