"""Serving a cached or still-filling blob file to one client.

Reads happen in a small thread pool (``os.pread``), one chunk at a time and
only while the client's connection asks for more, so a slow disk never
stalls the reactor and a slow client only slows itself. A full read of a
complete file is verified as it goes and the last chunk is held back until
the digest matched: a file damaged on disk is never served as good (the
client sees a short read and the entry is discarded).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from ..oci import DigestHasher
from ..streaming import IdleWatchdog, abort_client, client_gone
from .fill import Fill, FillState

log = Logger()

CHUNK = 256 * 1024


@implementer(IPushProducer)
class FileSender:
    """Sends bytes ``[start, end)`` of ``path``, which ``fill`` may still write."""

    def __init__(
        self,
        request: Request,
        path: str,
        start: int,
        end: int | None,
        reactor: IReactorThreads,
        pool: ThreadPool,
        fill: Fill | None = None,
        verify: DigestHasher | None = None,
        on_end: Callable[[str, int], None] = lambda outcome, sent: None,
        resume: Callable[[int], None] | None = None,
        idle: tuple[IReactorTime, float] | None = None,
    ) -> None:
        """``resume(offset)`` takes over the client if the fill loses its disk;
        ``idle`` (clock, seconds): give up on a client that reads nothing."""
        self.request = request
        self.fd = os.open(path, os.O_RDONLY)
        self.offset = start
        self.end = end
        self.reactor = reactor
        self.pool = pool
        self.fill = fill
        self.verify = verify
        self.on_end = on_end
        self.resume = resume
        self.watchdog = IdleWatchdog(*idle, self._idle) if idle else None
        self.sent = 0
        self._paused = False
        self._reading = False
        self._done = False
        request.notifyFinish().addBoth(self._client_finished)

    def start(self) -> None:
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
            limit = fill.written - 1
            return limit if self.end is None else min(self.end - 1, limit)
        if self.end is None:
            assert fill is not None  # only fills have no known end
            return fill.written
        return self.end

    def _pump(self) -> None:
        if self._paused or self._reading or self._done:
            return
        if self.fill is not None and self.fill.state is FillState.FAILED:
            if self.fill.disk_error is not None and self.resume is not None:
                self._hand_over(self.resume)
            else:
                self._finish("fill-failed")
            return
        limit = self._limit()
        if self.offset >= limit:
            if self.fill is not None and self.fill.state is FillState.FILLING:
                self.fill.listen(self._pump)
            else:
                self._finish("done")
            return
        self._reading = True
        size = min(CHUNK, limit - self.offset)
        d = deferToThreadPool(
            self.reactor, self.pool, os.pread, self.fd, size, self.offset
        )
        d.addCallbacks(self._read, self._read_failed)

    def _read(self, data: bytes) -> None:
        self._reading = False
        if self._done:
            self._close()
            return
        if not data:
            self._finish("short-file")
            return
        self.offset += len(data)
        if self.verify is not None:
            self.verify.update(data)
            if self.offset == self.end and not self.verify.matches():
                self._finish("digest-mismatch")
                return
        self.sent += len(data)
        if self.watchdog is not None:
            self.watchdog.touch()
        self.request.write(data)
        self._pump()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
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
        if not self._reading and self.fd >= 0:
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
