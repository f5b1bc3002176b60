"""Serving a cached (or still-filling) blob file, in memory.

A real twisted.web Request over an iosim connection (tests/support/memory.py)
and a thread pool that reads only when the test says (``QueuedThreads``):
so what the client has received after each read, and when the sender
stops reading for a paused client, is exact. What must never happen: a
damaged file served whole, the last byte of a fill sent before its digest
matched.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from docxy.cache.blob_store import BlobStore
from docxy.cache.counters import Counters
from docxy.cache.fill import Fill
from docxy.cache.sender import CHUNK, FileSender
from docxy.oci import Digest
from tests.support.memory import Connection, QueuedThreads, open_client

BLOB = bytes(range(256)) * (3 * CHUNK // 256 + 100)  # three chunks and a bit
DIGEST = str(Digest.of(BLOB))


class Serve(Resource):
    """Answers every GET with a FileSender over ``path`` (or ``fill``)."""

    isLeaf = True

    def __init__(self, path: Path, threads: QueuedThreads, fill: Fill | None) -> None:
        super().__init__()
        self.path, self.threads, self.fill = path, threads, fill
        self.outcomes: list[tuple[str, int]] = []

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        verify = None if self.fill is not None else Digest.parse(DIGEST).hasher()
        sender = FileSender(
            request,
            str(self.path),
            0,
            len(BLOB),
            cast(IReactorThreads, self.threads),
            cast(ThreadPool, self.threads),
            fill=self.fill,
            verify=verify,
            on_end=lambda outcome, sent: self.outcomes.append((outcome, sent)),
        )
        sender.start()
        return NOT_DONE_YET


def connect(resource: Serve) -> Connection:
    reactor = MemoryReactorClock()
    connection = open_client(Site(resource, reactor=reactor), reactor, "/blob")
    connection.pump.flush()
    return connection


def step(threads: QueuedThreads, connection: Connection, reads: int = 1000) -> None:
    threads.run(reads)
    connection.pump.flush()


def test_a_complete_file_is_sent_whole_and_finished(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(BLOB)
    threads = QueuedThreads()
    resource = Serve(tmp_path / "blob", threads, None)
    client = connect(resource)
    step(threads, client)
    assert client.client.status == 200
    assert client.client.body == BLOB
    assert resource.outcomes == [("done", len(BLOB))]
    assert not client.docxy_side.aborted


def test_a_file_damaged_on_disk_is_never_served_whole(tmp_path: Path) -> None:
    damaged = bytearray(BLOB)
    damaged[10] ^= 1
    (tmp_path / "blob").write_bytes(bytes(damaged))
    threads = QueuedThreads()
    resource = Serve(tmp_path / "blob", threads, None)
    client = connect(resource)
    step(threads, client)
    assert len(client.client.body) < len(BLOB)  # the last chunk held back
    assert client.docxy_side.aborted  # a short read, not a wrong blob
    assert resource.outcomes[0][0] == "digest-mismatch"


def test_a_paused_client_gets_no_reads_until_it_reads_again(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(BLOB)
    threads = QueuedThreads()
    client = connect(Serve(tmp_path / "blob", threads, None))
    step(threads, client, reads=1)
    assert len(client.client.body) == CHUNK
    client.stop_reading()
    step(threads, client, reads=1)  # the read already asked for
    assert threads.queue == [], "the sender kept reading for a paused client"
    client.read_again()
    step(threads, client)
    assert client.client.body == BLOB


def filling(tmp_path: Path, threads: QueuedThreads) -> tuple[Fill, Serve]:
    store = BlobStore(tmp_path / "cache", 1 << 30)
    fill = Fill(store, DIGEST, len(BLOB), MemoryReactorClock(), 30.0, Counters())
    return fill, Serve(fill.temp, threads, fill)


def test_a_fill_s_last_byte_waits_for_its_digest(tmp_path: Path) -> None:
    threads = QueuedThreads()
    fill, resource = filling(tmp_path, threads)
    fill.dataReceived(BLOB[:1000])
    client = connect(resource)
    step(threads, client)
    assert client.client.body == BLOB[:999]  # what the fill wrote, but one byte
    fill.dataReceived(BLOB[1000:])
    step(threads, client)
    assert client.client.body == BLOB[:-1]

    fill.connectionLost(Failure(ResponseDone()))  # the digest matched
    step(threads, client)
    assert client.client.body == BLOB
    assert resource.outcomes == [("done", len(BLOB))]


def test_a_failed_fill_is_a_short_read(tmp_path: Path) -> None:
    threads = QueuedThreads()
    fill, resource = filling(tmp_path, threads)
    fill.dataReceived(BLOB[:-1] + b"!")  # the wrong last byte
    client = connect(resource)
    step(threads, client)
    fill.connectionLost(Failure(ResponseDone()))
    step(threads, client)
    assert client.client.body == BLOB[:-1]
    assert client.docxy_side.aborted
    assert resource.outcomes[0][0] == "fill-failed"


class ServeWithIdle(Serve):
    """Serve, with the sender's idle watchdog on ``clock``."""

    def __init__(self, path: Path, threads: QueuedThreads, clock: MemoryReactorClock):
        super().__init__(path, threads, None)
        self.clock = clock

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        FileSender(
            request,
            str(self.path),
            0,
            len(BLOB),
            cast(IReactorThreads, self.threads),
            cast(ThreadPool, self.threads),
            on_end=lambda outcome, sent: self.outcomes.append((outcome, sent)),
            idle=(self.clock, 30.0),
            nowait=False,  # every read through the queue, when the test says
        ).start()
        return NOT_DONE_YET


def test_a_client_that_stops_reading_is_dropped_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    """A cache hit holds a connection only while bytes move."""
    (tmp_path / "blob").write_bytes(BLOB)
    threads, clock = QueuedThreads(), MemoryReactorClock()
    resource = ServeWithIdle(tmp_path / "blob", threads, clock)
    client = connect(resource)
    step(threads, client, reads=1)
    client.stop_reading()
    step(threads, client, reads=1)
    clock.advance(29)
    assert resource.outcomes == []
    clock.advance(1)
    assert client.docxy_side.aborted
    # The read that arrived while the client was paused was held, not sent.
    assert resource.outcomes == [("idle-timeout", CHUNK)]


AHEAD = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three large reads


class ServeAhead(Serve):
    """Serve, a trusted hit: large reads, more than one in flight."""

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", str(len(AHEAD)).encode())
        FileSender(
            request,
            str(self.path),
            0,
            len(AHEAD),
            cast(IReactorThreads, self.threads),
            cast(ThreadPool, self.threads),
            on_end=lambda outcome, sent: self.outcomes.append((outcome, sent)),
            read_ahead=True,
            nowait=False,
        ).start()
        return NOT_DONE_YET


def test_read_ahead_keeps_two_reads_in_flight_and_sends_in_order(
    tmp_path: Path,
) -> None:
    (tmp_path / "blob").write_bytes(AHEAD)
    threads = QueuedThreads()
    resource = ServeAhead(tmp_path / "blob", threads, None)
    client = connect(resource)
    assert len(threads.queue) == 2  # two reads asked for at once
    threads.queue.reverse()  # the later read finishes first
    threads.run(1)
    client.pump.flush()
    assert client.client.body == b""  # held until the earlier one is in
    step(threads, client)
    assert client.client.body == AHEAD
    assert resource.outcomes == [("done", len(AHEAD))]


def test_a_fill_of_another_worker_is_read_as_far_as_its_file_goes(
    tmp_path: Path,
) -> None:
    """A RemoteFill (another process holds the fill's lock) has no hash or
    writer of its own: what readers may read is the file's size."""
    from docxy.cache.fill_lock import FillClaim, RemoteFill

    store = BlobStore(tmp_path / "cache", 1 << 30)
    path = store.temp_path(DIGEST)
    holder = FillClaim.take(path)  # "the other worker"
    assert isinstance(holder, FillClaim)
    with open(path, "r+b") as f:
        f.write(BLOB[:1000])
    other = FillClaim.take(path)
    assert isinstance(other, int)  # locked: we watch it
    clock = MemoryReactorClock()
    remote = RemoteFill(store, DIGEST, other, clock)
    assert remote.on_disk == 1000
    threads = QueuedThreads()
    client = connect(Serve(path, threads, remote))
    step(threads, client)
    assert client.client.body == BLOB[:999]  # the last byte waits, as for ours
    holder.release()
    clock.advance(1)  # it looks again: the lock is free, the fill failed
    step(threads, client)
    assert client.docxy_side.aborted
