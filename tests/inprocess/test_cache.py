"""The blob cache against a scripted upstream: single-flight, integrity, access."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer

from .blob_upstream import BLOB, CLIENT_PATH, DIGEST, PATH, Blob
from .harness import FakeUpstream, Harness, Reply, start, until


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest_twisted.async_yield_fixture
async def docxy(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await start(upstream, {"cache-dir": str(tmp_path / "cache")})
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_second_get_is_served_from_disk(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    blob = upstream.routes[PATH] = Blob()
    first = await docxy.request(b"GET", CLIENT_PATH)
    assert (first.code, first.body, first.length) == (200, BLOB, len(BLOB))
    cache = docxy.cache.blobs
    await until(lambda: DIGEST in cache.store.entries, "the fill to be committed")
    second = await docxy.request(b"GET", CLIENT_PATH)
    assert (second.code, second.body, second.length) == (200, BLOB, len(BLOB))
    assert second.headers.getRawHeaders(b"docker-content-digest") == [DIGEST.encode()]
    assert blob.gets == 1
    assert (cache.counters.misses, cache.counters.hits) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_concurrent_gets_share_one_upstream_transfer(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    blob = upstream.routes[PATH] = Blob(hold=True)
    cache = docxy.cache.blobs
    first = defer.ensureDeferred(docxy.request(b"GET", CLIENT_PATH))
    await until(lambda: DIGEST in cache.fills, "the fill to start")
    others = [
        defer.ensureDeferred(docxy.request(b"GET", CLIENT_PATH)) for _ in range(4)
    ]
    await until(lambda: cache.counters.joined_fills == 4, "four clients to join")
    blob.released.callback(None)
    replies: list[Reply] = await defer.gatherResults([first, *others])
    assert [(r.code, r.body == BLOB) for r in replies] == [(200, True)] * 5
    assert blob.gets == 1


@pytest_twisted.ensureDeferred
async def test_fill_survives_the_client_that_started_it(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent

    class Leave(Protocol):
        def connectionMade(self) -> None:
            self.transport.stopProducing()  # type: ignore[union-attr]

    blob = upstream.routes[PATH] = Blob(hold=True)
    cache = docxy.cache.blobs
    d = Agent(reactor).request(b"GET", (docxy.url + CLIENT_PATH).encode())
    (await d).deliverBody(Leave())  # the client goes away mid-body
    await until(lambda: cache.fills.get(DIGEST) is not None, "the fill")
    blob.released.callback(None)
    await until(lambda: DIGEST in cache.store.entries, "the fill to finish anyway")
    again = await docxy.request(b"GET", CLIENT_PATH)
    assert again.body == BLOB
    assert blob.gets == 1


@pytest_twisted.ensureDeferred
async def test_upstream_bytes_that_do_not_match_are_never_cached(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    wrong = bytearray(BLOB)
    wrong[1000] ^= 0xFF
    blob = upstream.routes[PATH] = Blob(bytes(wrong))
    cache = docxy.cache.blobs
    with pytest.raises(Exception):  # noqa: B017 (a short read, whatever its type)
        await docxy.request(b"GET", CLIENT_PATH)
    await until(lambda: DIGEST not in cache.fills, "the fill to end")
    assert DIGEST not in cache.store.entries
    assert cache.counters.digest_mismatches == 1
    assert list((cache.store.root / "tmp").iterdir()) == []
    blob.data = BLOB  # upstream fixed: the next pull heals
    assert (await docxy.request(b"GET", CLIENT_PATH)).body == BLOB


@pytest_twisted.ensureDeferred
async def test_damaged_file_is_never_served_as_good(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    blob = upstream.routes[PATH] = Blob()
    cache = docxy.cache.blobs
    await docxy.request(b"GET", CLIENT_PATH)
    await until(lambda: DIGEST in cache.store.entries, "the blob to be cached")
    path = cache.store.path(DIGEST)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(Exception):  # noqa: B017 (a short read)
        await docxy.request(b"GET", CLIENT_PATH)
    await until(lambda: DIGEST not in cache.store.entries, "the entry to be dropped")
    assert cache.counters.digest_mismatches == 1
    healed = await docxy.request(b"GET", CLIENT_PATH)
    assert healed.body == BLOB
    assert blob.gets == 2


@pytest_twisted.ensureDeferred
async def test_range_from_cache(docxy: Harness, upstream: FakeUpstream) -> None:
    upstream.routes[PATH] = Blob()
    cache = docxy.cache.blobs
    await docxy.request(b"GET", CLIENT_PATH)
    await until(lambda: DIGEST in cache.store.entries, "the blob to be cached")
    part = await docxy.request(b"GET", CLIENT_PATH, {b"range": [b"bytes=100-199"]})
    assert (part.code, part.body) == (206, BLOB[100:200])
    assert part.headers.getRawHeaders(b"content-range") == [
        b"bytes 100-199/%d" % len(BLOB)
    ]
    tail = await docxy.request(b"GET", CLIENT_PATH, {b"range": [b"bytes=-10"]})
    assert (tail.code, tail.body) == (206, BLOB[-10:])
    bad = await docxy.request(b"GET", CLIENT_PATH, {b"range": [b"bytes=99999999-"]})
    assert bad.code == 416
    assert bad.headers.getRawHeaders(b"content-range") == [b"bytes */%d" % len(BLOB)]
    assert json.loads(bad.body)["errors"][0]["code"] == "RANGE_INVALID"
    head = await docxy.request(b"HEAD", CLIENT_PATH)
    assert head.headers.getRawHeaders(b"content-length") == [b"%d" % len(BLOB)]


@pytest_twisted.ensureDeferred
async def test_cached_blob_is_not_given_to_a_client_upstream_refuses(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    blob = upstream.routes[PATH] = Blob()
    blob.allowed = lambda request: request.getHeader(b"authorization") == b"Bearer ok"
    cache = docxy.cache.blobs
    ok = await docxy.request(b"GET", CLIENT_PATH, {b"authorization": [b"Bearer ok"]})
    assert ok.body == BLOB
    await until(lambda: DIGEST in cache.store.entries, "the blob to be cached")
    for credentials in ({}, {b"authorization": [b"Bearer other"]}):
        denied = await docxy.request(b"GET", CLIENT_PATH, credentials)
        assert denied.code == 401
        assert BLOB[:64] not in denied.body
    assert cache.counters.denied == 2
    again = await docxy.request(b"GET", CLIENT_PATH, {b"authorization": [b"Bearer ok"]})
    assert again.body == BLOB
    assert blob.gets == 1


@pytest_twisted.ensureDeferred
async def test_fill_survives_a_starter_that_leaves_before_upstream_answers(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    blob = upstream.routes[PATH] = Blob(hold_headers=True)
    cache = docxy.cache.blobs
    starter = defer.ensureDeferred(docxy.request(b"GET", CLIENT_PATH))
    await until(lambda: DIGEST in cache._opening, "the fill to be opening")
    joiner = defer.ensureDeferred(docxy.request(b"GET", CLIENT_PATH))
    await until(lambda: blob.gets == 1, "the upstream GET")
    gone: list[dict[str, object]] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "docxy.access" and event.get("status") == 200:
            gone.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        starter.cancel()  # the first client leaves before any header arrived
        with pytest.raises(Exception):  # noqa: B017 (cancelled, as Agent reports it)
            await starter
        # Docxy has seen it go (its access line) before upstream answers.
        await until(lambda: bool(gone), "Docxy to notice the client left")
    finally:
        globalLogPublisher.removeObserver(observe)
    blob.released.callback(None)
    reply = await joiner
    assert (reply.code, reply.body) == (200, BLOB)
    await until(lambda: DIGEST in cache.store.entries, "the blob to be cached")
    assert blob.gets == 1


async def cached_then_stopped(
    upstream: FakeUpstream, tmp_path: Path
) -> dict[str, object]:
    """A Docxy that cached the blob and stopped; the settings to start another."""
    settings: dict[str, object] = {"cache-dir": str(tmp_path / "cache")}
    first = await start(upstream, settings)
    try:
        await first.request(b"GET", CLIENT_PATH)
        await until(lambda: DIGEST in first.cache.blobs.store.entries, "the fill")
    finally:
        await first.stop()
    return settings


@pytest_twisted.ensureDeferred
async def test_after_a_restart_the_first_read_is_hashed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Damage done while Docxy was stopped (no seal to compare) is found by
    the first read after the start: a short read, the entry dropped."""
    blob = upstream.routes[PATH] = Blob()
    settings = await cached_then_stopped(upstream, tmp_path)
    path = tmp_path / "cache" / "blobs" / "sha256" / DIGEST[7:9] / DIGEST[7:]
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0x01
    path.write_bytes(bytes(damaged))

    restarted = await start(upstream, settings)
    try:
        cache = restarted.cache.blobs
        with pytest.raises(Exception):  # noqa: B017 (a short read)
            await restarted.request(b"GET", CLIENT_PATH)
        await until(lambda: DIGEST not in cache.store.entries, "the entry dropped")
        assert cache.counters.digest_mismatches == 1
        assert (await restarted.request(b"GET", CLIENT_PATH)).body == BLOB
        assert blob.gets == 2
    finally:
        await restarted.stop()


@pytest_twisted.ensureDeferred
async def test_a_hashed_read_seals_the_file_for_later_hits(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.routes[PATH] = Blob()
    settings = await cached_then_stopped(upstream, tmp_path)
    restarted = await start(upstream, settings)
    try:
        entry = restarted.cache.blobs.store.entries[DIGEST]
        assert entry.seal is None  # not trusted yet
        assert (await restarted.request(b"GET", CLIENT_PATH)).body == BLOB
        await until(lambda: entry.seal is not None, "the hashed read to seal it")
        assert (await restarted.request(b"GET", CLIENT_PATH)).body == BLOB
    finally:
        await restarted.stop()
