"""Manifest caching against a scripted upstream: Accept, 429, bad bytes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.web.server import Request

from docxy.cache.pullthrough import PullThroughCache

from .harness import FakeUpstream, Harness, start

OCI = b"application/vnd.oci.image.manifest.v1+json"
DOCKER = b"application/vnd.docker.distribution.manifest.v2+json"
BODIES = {OCI: b'{"schemaVersion":2,"mediaType":"oci"}', DOCKER: b'{"schemaVersion":2}'}


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


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
            if reference == digest(body).encode():
                kind = media
        body = BODIES[kind]
        request.setHeader(b"content-type", kind)
        request.setHeader(b"docker-content-digest", digest(body).encode())
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
        upstream.routes[f"/v2/library/app/manifests/{digest(body)}".encode()] = handler
    return handler


@pytest_twisted.async_yield_fixture
async def docxy(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await start(
        upstream, {"cache-dir": str(tmp_path / "c"), "cache-freshness": "0.001"}
    )
    yield harness
    await harness.stop()


def cache_of(docxy: Harness) -> PullThroughCache:
    cache = docxy.docxy_port.factory.resource.children[b"v2"].cache
    assert isinstance(cache, PullThroughCache)
    return cache


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
    assert cache_of(docxy).counters.stale_serves == 2


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
    assert cache_of(docxy).counters.digest_mismatches == 1
    manifests.corrupt = False
    healed = await docxy.request(b"GET", "/v2/app/manifests/1", {b"accept": [OCI]})
    assert healed.body == BODIES[OCI]


@pytest_twisted.ensureDeferred
async def test_head_on_a_cached_manifest_answers_from_cache(
    docxy: Harness, manifests: Manifests, upstream: FakeUpstream
) -> None:
    by_digest = f"/v2/app/manifests/{digest(BODIES[DOCKER])}"
    await docxy.request(b"GET", by_digest)
    seen = len(upstream.seen)
    head = await docxy.request(b"HEAD", by_digest)
    assert head.headers.getRawHeaders(b"content-length") == [
        b"%d" % len(BODIES[DOCKER])
    ]
    # Only the access check's HEAD may reach upstream, never a GET.
    assert all(s.method != b"GET" or b"/token" in s.uri for s in upstream.seen[seen:])
