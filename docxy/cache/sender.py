"""Serving a cached or still-filling blob file to one client, by reads.

The path for clients the kernel cannot serve directly (TLS, files not yet
trusted, fills): see :mod:`docxy.cache.kernel_sender` for plain TCP hits.

Reads never wait for the disk on the reactor thread. A read first asks the
page cache alone (``preadv`` with ``RWF_NOWAIT``: it copies what is cached
and never blocks); only what is not cached is read in the disk threads.
Hits of trusted files keep more than one large read in flight (read-ahead),
delivered in order; a slow client only slows itself, and what is held for
a paused client is at most ``window`` reads.

A file that is not trusted (see :mod:`docxy.cache.integrity`) is hashed as
it is read, in the disk threads, one read at a time, and the last chunk is
held back until the digest matched: a file damaged on disk is never served
as good (the client sees a short read and the entry is discarded).
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IPushProducer, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from ..oci import DigestHasher
from ..streaming import IdleWatchdog, abort_client, client_gone, widen_writes
from .fill import Fill, FillState

log = Logger()

CHUNK = 256 * 1024
# Hits of trusted files: reads this large, this many in flight.
HIT_CHUNK = 1024 * 1024
HIT_WINDOW = 2

# Cleared at the first filesystem that refuses RWF_NOWAIT.
_nowait_works = hasattr(os, "RWF_NOWAIT")


def read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """What of ``[offset, offset+size)`` the page cache holds, without waiting
    for the disk; None if nothing (the caller reads in the disk threads)."""
    global _nowait_works
    if not _nowait_works:
        return None
    buffer = bytearray(size)
    try:
        count = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _nowait_works = False
        return None
    if count <= 0:
        return None
    return bytes(buffer) if count == size else bytes(buffer[:count])


@dataclass
class _Read:
    offset: int
    size: int
    data: bytes | None = None


@implementer(IPushProducer)
class FileSender:
    """Sends bytes ``[start, end)`` of a file, which ``fill`` may still write."""

    def __init__(
        self,
        request: Request,
        path: str | int,
        start: int,
        end: int | None,
        reactor: IReactorThreads,
        pool: ThreadPool,
        fill: Fill | None = None,
        verify: DigestHasher | None = None,
        on_end: Callable[[str, int], None] = lambda outcome, sent: None,
        resume: Callable[[int], None] | None = None,
        idle: tuple[IReactorTime, float] | None = None,
        read_ahead: bool = False,
        nowait: bool = True,
    ) -> None:
        """``path``: a file name, or a descriptor the sender then owns.

        ``resume(offset)`` takes over the client if the fill loses its disk;
        ``idle`` (clock, seconds): give up on a client that reads nothing;
        ``read_ahead``: large reads, several in flight (complete files).
        """
        self.request = request
        self.fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY)
        self.offset = start  # the next byte the client gets
        self._next = start  # the next byte a read asks for
        self.end = end
        self.reactor = reactor
        self.pool = pool
        self.fill = fill
        self.verify = verify
        self.on_end = on_end
        self.resume = resume
        self.watchdog = IdleWatchdog(*idle, self._idle) if idle else None
        ahead = read_ahead and verify is None and fill is None
        self.chunk = HIT_CHUNK if ahead else CHUNK
        self.window = HIT_WINDOW if ahead else 1
        # Hashing happens in the disk threads, so verified reads use them only.
        self.nowait = nowait and verify is None
        self.sent = 0
        self._queue: deque[_Read] = deque()
        self._in_pool = 0
        self._paused = False
        self._pumping = False
        self._listening = False
        self._done = False
        request.notifyFinish().addBoth(self._client_finished)

    def start(self) -> None:
        widen_writes(self.request)
        self.request.registerProducer(self, True)
        if self.watchdog is not None:
            self.watchdog.start()
        self._pump()

    def _limit(self) -> int:
        """How far may be read now.

        While the fill runs, its last written byte is held back: the end of
        the body is only sent once the fill verified the digest, so a
        mismatch reaches the client as a short read.
        """
        fill = self.fill
        if fill is not None and fill.state is not FillState.DONE:
            limit = fill.on_disk - 1
            return limit if self.end is None else min(self.end - 1, limit)
        if self.end is None:
            assert fill is not None  # only fills have no known end
            return fill.on_disk
        return self.end

    def _pump(self) -> None:
        if self._pumping:  # a write paused or resumed us: the loop goes on
            return
        self._pumping = True
        try:
            while not (self._paused or self._done) and self._step():
                pass
        finally:
            self._pumping = False

    def _step(self) -> bool:
        """One delivery or one read issued; False when there is nothing to do."""
        queue = self._queue
        if queue and queue[0].data is not None:
            self._deliver(queue.popleft().data or b"")
            return True
        if len(queue) >= self.window:
            return False  # waiting for a read in flight
        fill = self.fill
        if fill is not None and fill.state is FillState.FAILED:
            if queue:
                return False
            if fill.resume_upstream and self.resume is not None:
                self._hand_over(self.resume)
            else:
                self._finish("fill-failed")
            return False
        limit = self._limit()
        if self._next >= limit:
            if queue:
                return False
            if fill is not None and fill.state is FillState.FILLING:
                if not self._listening:
                    self._listening = True
                    fill.listen(self._more_written)
            else:
                self._finish("done")
            return False
        size = min(self.chunk, limit - self._next)
        if not queue and self.nowait:
            data = read_cached(self.fd, size, self._next)
            if data is not None:
                self._next += len(data)
                self._deliver(data)
                return True
        read = _Read(self._next, size)
        self._next += size
        queue.append(read)
        self._in_pool += 1
        d = deferToThreadPool(
            self.reactor, self.pool, self._read_in_thread, size, read.offset
        )
        d.addCallbacks(self._arrived, self._read_failed, callbackArgs=(read,))
        return True

    def _read_in_thread(self, size: int, offset: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        if self.verify is not None:
            self.verify.update(data)
        return data

    def _more_written(self) -> None:
        self._listening = False
        self._pump()

    def _arrived(self, data: bytes, read: _Read) -> None:
        self._in_pool -= 1
        if self._done:
            self._close()
            return
        if len(data) != read.size:
            self._finish("short-file")
            return
        read.data = data
        self._pump()

    def _deliver(self, data: bytes) -> None:
        self.offset += len(data)
        if (
            self.verify is not None
            and self.offset == self.end
            and not self.verify.matches()
        ):
            self._finish("digest-mismatch")
            return
        self.sent += len(data)
        if self.watchdog is not None:
            self.watchdog.touch()
        self.request.write(data)

    def _read_failed(self, failure: Failure) -> None:
        self._in_pool -= 1
        if self._done:
            self._close()
            return
        log.failure("reading a cached blob failed", failure)
        self._finish("read-error")

    def _idle(self) -> None:
        log.warn(
            "no progress for {timeout}s after {bytes} bytes of a cached blob; "
            "aborting transfer",
            timeout=self.watchdog.timeout if self.watchdog else 0,
            bytes=self.sent,
        )
        self._finish("idle-timeout")

    def _close(self) -> None:
        """Close the descriptor, but never under a read still in the pool
        (its number could be reused by another file meanwhile)."""
        if self.watchdog is not None:
            self.watchdog.stop()
        self._queue.clear()
        if not self._in_pool and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _finish(self, outcome: str) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        if not client_gone(self.request):
            self.request.unregisterProducer()
            if outcome == "done":
                self.request.finish()
            else:
                abort_client(self.request)  # a short read, never a wrong body
        self.on_end(outcome, self.sent)

    def _hand_over(self, resume: Callable[[int], None]) -> None:
        """The rest of the body comes from elsewhere, from ``self.offset`` on."""
        self._done = True
        self._close()
        if client_gone(self.request):
            self.on_end("client-gone", self.sent)
            return
        self.request.unregisterProducer()
        self.on_end("resumed", self.sent)
        resume(self.offset)

    def _client_finished(self, result: object) -> None:
        if not self._done:
            self._done = True
            self._close()
            self.on_end("client-gone", self.sent)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._paused = True
