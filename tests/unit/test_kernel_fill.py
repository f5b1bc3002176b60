"""KernelFill on real kernel objects: a socket pair, a pipe, a file.

The upstream connection is one end of a socket pair; the test writes the
body into the other end. What must hold: every byte but the last reaches
the file at its offset and is hashed, the parser is told how many went
past it and gets the socket back; an upstream that closes early, or a file
that refuses the bytes, aborts the connection and says why; a paused fill
reads nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool

from docxy.cache.hashing import BackgroundHash, HashThread
from docxy.cache.kernel_fill import KernelFill
from docxy.oci import Digest
from docxy.upstream_client import RawBody
from tests.support.digests import sha256_digest

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 17)


@dataclass
class Upstream:
    """The bits of a ``tcp.Client`` KernelFill uses, on a real socket."""

    sock: socket.socket
    calls: list[str] = field(default_factory=list)
    given_back: Any = None  # called when the parser gets the socket back

    def fileno(self) -> int:
        return self.sock.fileno()

    def stopReading(self) -> None:
        self.calls.append("stopReading")

    def startReading(self) -> None:
        self.calls.append("startReading")
        if self.given_back is not None:
            self.given_back()

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


@dataclass
class Outcome:
    moved: int = 0
    disk: list[OSError] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)
    ended: defer.Deferred[None] = field(default_factory=defer.Deferred)

    def end(self) -> None:
        """On the next turn: the test looks once KernelFill finished its own."""
        if not self.ended.called:
            reactor.callLater(0, self._fire)

    def _fire(self) -> None:
        if not self.ended.called:
            self.ended.callback(None)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=1, maxthreads=2, name="test-kernel-fill")
    threads.start()
    yield threads
    threads.stop()


@pytest.fixture
def hash_thread() -> Iterator[HashThread]:
    thread = HashThread(reactor)
    yield thread
    thread.stop()


def start(
    body: bytes,
    file: Any,
    hash_thread: HashThread,
    pool: ThreadPool,
    length: int | None = None,
) -> tuple[KernelFill, Upstream, socket.socket, Outcome, BackgroundHash, Any]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    upstream = Upstream(ours)
    decoder = SimpleNamespace(contentLength=length or len(body))
    digest = Digest.parse(sha256_digest(body[:-1]))
    hashing = BackgroundHash(digest, hash_thread, lambda: None, lambda: None, file)
    outcome = Outcome()

    def moved(count: int) -> None:
        outcome.moved += count

    upstream.given_back = outcome.end

    def disk_failed(error: OSError) -> None:
        outcome.disk.append(error)
        outcome.end()

    def upstream_failed(why: str) -> None:
        outcome.upstream.append(why)
        outcome.end()

    kernel = KernelFill(
        RawBody(upstream, decoder),  # type: ignore[arg-type]
        hashing,
        file.fileno(),
        reactor,
        pool,
        moved,
        disk_failed,
        upstream_failed,
    )
    assert kernel.start()
    return kernel, upstream, theirs, outcome, hashing, decoder


def send_in_thread(
    sock: socket.socket, data: bytes, close: bool = False
) -> threading.Thread:
    """The upstream sends from a thread. A fill that gives up (a refused
    file) reads no more: its sender waits until the test closes the reading
    end, then fails (EPIPE), as an upstream would; the file shows the bytes."""

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if close:
            sock.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest_twisted.ensureDeferred
async def test_every_byte_but_the_last_lands_in_the_file_hashed(
    tmp_path: Path, hash_thread: HashThread, pool: ThreadPool
) -> None:
    with open(tmp_path / "fill", "w+b", buffering=0) as file:
        kernel, upstream, theirs, outcome, hashing, decoder = start(
            BODY, file, hash_thread, pool
        )
        send_in_thread(theirs, BODY)
        await outcome.ended
        assert kernel.done and outcome.disk == [] and outcome.upstream == []
        assert await hashing.matches()  # the digest of all but the last byte
        assert (tmp_path / "fill").read_bytes() == BODY[:-1]
        assert decoder.contentLength == 1  # the parser reads the last byte
        assert upstream.calls == ["stopReading", "startReading"]
        assert hashing.submitted == len(BODY) - 1 == hashing.on_disk
        theirs.close()
        upstream.sock.close()


@pytest_twisted.ensureDeferred
async def test_an_upstream_closing_early_aborts_and_says_so(
    tmp_path: Path, hash_thread: HashThread, pool: ThreadPool
) -> None:
    with open(tmp_path / "fill", "w+b", buffering=0) as file:
        kernel, upstream, theirs, outcome, _, decoder = start(
            BODY, file, hash_thread, pool
        )
        send_in_thread(theirs, BODY[: 2 * MIB], close=True)
        await outcome.ended
        assert outcome.upstream == ["upstream closed the connection"]
        assert upstream.calls[-1] == "abortConnection"
        assert "startReading" not in upstream.calls
        assert kernel.done and outcome.moved == 2 * MIB
        assert (tmp_path / "fill").read_bytes() == BODY[: 2 * MIB]
        assert decoder.contentLength == len(BODY)  # the parser was told nothing
        upstream.sock.close()


@pytest_twisted.ensureDeferred
async def test_a_file_that_refuses_the_bytes_is_a_disk_error(
    tmp_path: Path, hash_thread: HashThread, pool: ThreadPool
) -> None:
    (tmp_path / "fill").write_bytes(b"")
    with open(tmp_path / "fill", "rb", buffering=0) as file:  # not writable
        kernel, upstream, theirs, outcome, _, _ = start(BODY, file, hash_thread, pool)
        sender = send_in_thread(theirs, BODY)
        await outcome.ended
        assert len(outcome.disk) == 1 and outcome.upstream == []
        assert upstream.calls[-1] == "abortConnection"
        assert kernel.done and outcome.moved == 0
        upstream.sock.close()  # the sender stops (EPIPE) before its socket goes
        sender.join(30)
        theirs.close()


@pytest_twisted.ensureDeferred
async def test_a_paused_fill_reads_nothing_until_resumed(
    tmp_path: Path, hash_thread: HashThread, pool: ThreadPool
) -> None:
    with open(tmp_path / "fill", "w+b", buffering=0) as file:
        kernel, upstream, theirs, outcome, _, _ = start(BODY, file, hash_thread, pool)
        kernel.pause()
        theirs.sendall(BODY[:4096])  # fits the socket buffer: readable now
        for _ in range(3):  # reactor turns with the socket readable
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0, d.callback, None)
            await d
        assert kernel not in reactor.getReaders()
        assert outcome.moved == 0 and not kernel.done
        kernel.resume()
        send_in_thread(theirs, BODY[4096:])
        await outcome.ended
        assert outcome.moved == len(BODY) - 1
        assert (tmp_path / "fill").read_bytes() == BODY[:-1]
        theirs.close()
        upstream.sock.close()
