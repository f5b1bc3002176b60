"""The first client of a fill, fed from memory (the tee), in memory.

A real twisted.web Request over an iosim connection and a real Fill on
disk: the client gets the bytes as they arrive without a file read, never
the last byte before the digest matched, and a client that stops reading
makes the tee fall back to the file once it lags by more than LAG, so
memory stays bounded and the fill is never paused.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from docxy.cache.blob_store import BlobStore
from docxy.cache.counters import Counters
from docxy.cache.fill import Fill
from docxy.cache.tee import LAG, TeeSender
from docxy.oci import Digest
from tests.support.memory import Connection, QueuedThreads, open_client

CHUNK = 64 * 1024
BLOB = bytes(range(256)) * (3 * LAG // 256)  # three lags
DIGEST = str(Digest.of(BLOB))


class Serve(Resource):
    isLeaf = True

    def __init__(self, fill: Fill, threads: QueuedThreads) -> None:
        super().__init__()
        self.fill, self.threads = fill, threads
        self.outcomes: list[tuple[str, int]] = []
        self.tees: list[TeeSender] = []
        # The tee's clock, and the reactor its file fallback reads through.
        self.reactor = MemoryReactorClock()
        self.reactor.callFromThread = threads.callFromThread  # type: ignore[attr-defined]

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", b"%d" % len(BLOB))
        tee = TeeSender(
            request,
            self.fill,
            self.reactor,
            cast(ThreadPool, self.threads),
            30.0,
            on_end=lambda outcome, sent: self.outcomes.append((outcome, sent)),
            resume=lambda offset: None,
        )
        self.tees.append(tee)
        assert tee.start()
        return NOT_DONE_YET


def setup(tmp_path: Path, data: bytes = BLOB) -> tuple[Fill, Serve, Connection]:
    store = BlobStore(tmp_path / "cache", 1 << 30)
    fill = Fill(store, DIGEST, len(data), MemoryReactorClock(), 30.0, Counters())
    threads = QueuedThreads()
    serve = Serve(fill, threads)
    reactor = MemoryReactorClock()
    connection = open_client(Site(serve, reactor=reactor), reactor, "/blob")
    connection.pump.flush()
    return fill, serve, connection


def feed(fill: Fill, data: bytes, connection: Connection) -> None:
    for at in range(0, len(data), CHUNK):
        fill.dataReceived(data[at : at + CHUNK])
        connection.pump.flush()


def test_the_first_client_gets_the_bytes_as_they_arrive(tmp_path: Path) -> None:
    fill, serve, client = setup(tmp_path)
    feed(fill, BLOB[:1000], client)
    assert client.client.body == b""  # the latest chunk waits for the next
    feed(fill, BLOB[1000:], client)
    last = (len(BLOB) - 1000) % CHUNK or CHUNK
    assert client.client.body == BLOB[:-last]  # all but the latest chunk
    assert serve.threads.queue == []  # no file read
    fill.connectionLost(Failure(ResponseDone()))  # the digest matched
    client.pump.flush()
    assert client.client.body == BLOB
    assert serve.outcomes == [("done", len(BLOB))]


def test_what_arrived_before_the_client_tapped_is_not_lost(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache", 1 << 30)
    fill = Fill(store, DIGEST, len(BLOB), MemoryReactorClock(), 30.0, Counters())
    fill.dataReceived(BLOB[:CHUNK])  # with the upstream's headers
    threads = QueuedThreads()
    serve = Serve(fill, threads)
    reactor = MemoryReactorClock()
    client = open_client(Site(serve, reactor=reactor), reactor, "/blob")
    client.pump.flush()
    feed(fill, BLOB[CHUNK:], client)
    fill.connectionLost(Failure(ResponseDone()))
    client.pump.flush()
    assert client.client.body == BLOB


def test_a_mismatch_is_a_short_read(tmp_path: Path) -> None:
    fill, serve, client = setup(tmp_path)
    feed(fill, BLOB[:-1] + b"!", client)
    fill.connectionLost(Failure(ResponseDone()))
    client.pump.flush()
    assert len(client.client.body) < len(BLOB)
    assert client.docxy_side.aborted
    assert serve.outcomes == [("fill-failed", len(client.client.body))]


def test_a_client_that_lags_reads_the_file_instead(tmp_path: Path) -> None:
    fill, serve, client = setup(tmp_path)
    feed(fill, BLOB[:CHUNK], client)
    client.stop_reading()
    tee = serve.tees[0]
    held = 0
    for at in range(CHUNK, len(BLOB), CHUNK):
        fill.dataReceived(BLOB[at : at + CHUNK])  # never paused by the client
        held = max(held, tee._held_bytes)
    assert held <= LAG + CHUNK  # memory bounded by the lag
    assert tee._held_bytes == 0  # dropped: the rest is in the file
    fill.connectionLost(Failure(ResponseDone()))
    client.read_again()
    for _ in range(100):
        serve.threads.run()
        client.pump.flush()
    assert client.client.body == BLOB
    assert serve.outcomes == [("done", len(BLOB))]
