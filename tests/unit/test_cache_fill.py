"""One cache fill from a scripted upstream, in memory, on a fake clock.

The fill is the upstream body's protocol: a real response (treq's
``RequestTraversalAgent``) delivers into it and a real ``BlobStore`` on
disk takes the bytes. What must never reach the store (wrong bytes, a
short body, a stalled upstream) is checked, the stall by moving the clock.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from docxy.cache.blob_store import BlobStore
from docxy.cache.counters import Counters
from docxy.cache.fill import Fill, FillState, open_fill_file
from tests.support.digests import sha256_digest
from tests.support.memory import (
    Held,
    MemoryNet,
    QueuedHashThread,
    Scripted,
    result,
)

BLOB = bytes(range(256)) * 40
IDLE = 30.0


def fill_from(
    net: MemoryNet, store: BlobStore, digest: str, counters: Counters
) -> Fill:
    """GET the blob from the scripted upstream and deliver it into a Fill."""
    d = net.agent.request(b"GET", b"http://up.test/blob")
    net.pump()
    response: IResponse = result(d)
    fill = Fill(store, digest, response.length, net.clock, IDLE, counters)
    response.deliverBody(fill)
    net.pump()
    return fill


def serve(body: bytes, length: int | None = None):
    def handler(request: Request) -> bytes:
        request.setHeader(b"content-length", str(length or len(body)).encode())
        if length is not None and length > len(body):
            request.write(body)
            request.loseConnection()
            return b""
        return body

    return handler


def test_a_complete_blob_is_stored_under_its_digest(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store, counters = BlobStore(tmp_path / "cache", 1 << 30), Counters()
    fill = fill_from(
        MemoryNet(Scripted({"/blob": serve(BLOB)})), store, digest, counters
    )
    assert fill.state is FillState.DONE
    assert store.get(digest) is not None
    assert store.path(digest).read_bytes() == BLOB
    assert counters.bytes_from_upstream == len(BLOB)


def test_the_claimed_empty_fill_file_is_not_truncated(tmp_path: Path) -> None:
    # On ext4 a truncated file's close writes back all it holds (auto_da_alloc):
    # 130 ms for 500 MiB at the end of each fill. A truncation shows in mtime.
    path = tmp_path / "x.fill"
    path.touch()
    os.utime(path, ns=(0, 0))
    with open_fill_file(path) as f:
        assert os.stat(path).st_mtime_ns == 0
        f.write(b"abc")
    assert path.read_bytes() == b"abc"


def test_a_dead_fills_bytes_in_the_file_are_dropped(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store, counters = BlobStore(tmp_path / "cache", 1 << 30), Counters()
    store.temp_path(digest).write_bytes(b"stale" * len(BLOB))
    fill = fill_from(
        MemoryNet(Scripted({"/blob": serve(BLOB)})), store, digest, counters
    )
    assert fill.state is FillState.DONE
    assert store.path(digest).read_bytes() == BLOB


def test_bytes_that_are_not_the_digest_are_discarded(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store, counters = BlobStore(tmp_path / "cache", 1 << 30), Counters()
    wrong = BLOB[:-1] + b"!"
    fill = fill_from(
        MemoryNet(Scripted({"/blob": serve(wrong)})), store, digest, counters
    )
    assert fill.state is FillState.FAILED
    assert counters.digest_mismatches == 1
    assert store.get(digest) is None
    assert not fill.temp.exists()


def test_a_short_body_is_discarded(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store = BlobStore(tmp_path / "cache", 1 << 30)
    short = serve(BLOB[:1000], length=len(BLOB))
    fill = fill_from(MemoryNet(Scripted({"/blob": short})), store, digest, Counters())
    assert fill.state is FillState.FAILED
    assert store.get(digest) is None
    assert not fill.temp.exists()


def test_a_stalled_upstream_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store = BlobStore(tmp_path / "cache", 1 << 30)
    held = Held()

    def stall(request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        request.write(BLOB[:1000])
        return held(request)

    net = MemoryNet(Scripted({"/blob": stall}))
    fill = fill_from(net, store, digest, Counters())
    ended: list[None] = []
    fill.finished.addCallback(ended.append)
    net.advance(IDLE - 0.5)
    held.waiting[0].write(BLOB[1000:2000])  # progress resets the watchdog
    net.pump()
    net.advance(IDLE - 0.5)
    assert fill.state is FillState.FILLING
    assert fill.written == 2000

    net.advance(0.5)
    assert ended, "the fill still waits on a stalled upstream"
    assert fill.state.value == "failed"
    assert held.lost, "the stalled upstream connection was left open"
    assert store.get(digest) is None
    assert not fill.temp.exists()


def test_each_listener_is_called_once_at_the_next_write(tmp_path: Path) -> None:
    digest = sha256_digest(BLOB)
    store = BlobStore(tmp_path / "cache", 1 << 30)
    held = Held()

    def slow(request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        request.write(BLOB[:100])
        return held(request)

    net = MemoryNet(Scripted({"/blob": slow}))
    fill = fill_from(net, store, digest, Counters())
    heard: list[tuple[int, FillState]] = []

    def note() -> None:
        heard.append((fill.written, fill.state))

    fill.listen(note)
    held.waiting[0].write(BLOB[100:200])
    net.pump()
    fill.listen(note)
    fill.listen(note)
    request = held.waiting.pop()
    request.write(BLOB[200:])
    request.finish()
    net.pump()
    fill.listen(note)  # after the end: nothing more to hear
    net.pump()
    filling = FillState.FILLING
    assert heard == [(200, filling), (len(BLOB), filling), (len(BLOB), filling)]
    assert fill.state is FillState.DONE


def test_a_reader_of_the_file_wakes_when_the_hash_thread_wrote(tmp_path: Path) -> None:
    """Bytes arrived but not yet written: a reader that waits for them is
    woken by the write, even if the upstream sends nothing more (before,
    a joined client of a paused upstream never got its headers)."""
    digest = sha256_digest(BLOB)
    store, counters = BlobStore(tmp_path / "cache", 1 << 30), Counters()
    thread = QueuedHashThread()
    fill = Fill(
        store,
        digest,
        len(BLOB),
        Clock(),
        IDLE,
        counters,
        hash_thread=thread,  # type: ignore[arg-type]
    )
    fill.dataReceived(BLOB[:100])
    assert (fill.written, fill.on_disk) == (100, 0)
    woken: list[int] = []
    fill.listen(lambda: woken.append(fill.on_disk))
    assert woken == []
    thread.threads.run()
    assert woken == [100]
    assert store.temp_path(digest).read_bytes() == BLOB[:100]
    fill.dataReceived(BLOB[100:])
    fill.connectionLost(Failure(ResponseDone()))
    thread.threads.run()
    assert fill.state is FillState.DONE  # and its file is closed
