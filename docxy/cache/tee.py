"""The first client of a fill, fed from the upstream bytes as they arrive.

Reading the growing file back costs a read per chunk; the client that
started the fill instead gets the very bytes the fill just wrote (a tee:
the same bytes to the file and to the client). The fill is still never
paused by this client: while the client's connection is full the bytes
are held in memory, and once more than :data:`LAG` are held the client
falls back to reading the file from where it is (a
:class:`~docxy.cache.sender.FileSender` on a descriptor opened at the
start, so the rename at the end does not matter), like any joiner. As for
joiners, the end of the body waits for the digest: a mismatch is a short
read.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from ..streaming import IdleWatchdog, abort_client, client_gone, widen_writes
from .fill import Fill, FillState
from .fill_reader import read_fill

# Held for a paused client before it reads the file instead.
LAG = 4 * 1024 * 1024


@implementer(IPushProducer)
class TeeSender:
    """Sends a fill's bytes to ``request`` from memory, or from its file once
    it lags; ``on_end(outcome, bytes)`` and ``resume(offset)`` as for
    :class:`~docxy.cache.sender.FileSender`."""

    def __init__(
        self,
        request: Request,
        fill: Fill,
        reactor: Any,
        pool: Any,
        idle_timeout: float,
        on_end: Callable[[str, int], None],
        resume: Callable[[int], None],
    ) -> None:
        self.request = request
        self.fill = fill
        self.reactor = reactor
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.on_end = on_end
        self.resume = resume
        self.fd = os.open(fill.temp, os.O_RDONLY | os.O_CLOEXEC)
        self.sent = 0
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        # The latest chunk, sent when the next arrives (no copy), the last one
        # once the digest matched.
        self._last = b""
        self._paused = False
        self._done = False
        self.watchdog = IdleWatchdog(reactor, idle_timeout, self._idle)

    def start(self) -> bool:
        """Start feeding; False (nothing done) if the fill can no longer be tapped."""
        if not self.fill.tap(self._arrived, self._to_file):
            os.close(self.fd)
            return False
        self.request.notifyFinish().addBoth(self._client_finished)
        widen_writes(self.request)
        self.request.write(b"")  # the headers now, whatever the upstream does
        self.request.registerProducer(self, True)
        self.watchdog.start()
        self.fill.finished.addBoth(self._fill_ended)
        return True

    def _arrived(self, data: bytes) -> None:
        if self._done:
            return
        data, self._last = self._last, data
        if not data:
            return
        if self._paused or self._held:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > LAG:
                self._to_file()
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.sent += len(data)
        self.watchdog.touch()
        self.request.write(data)

    def _flush(self) -> None:
        while self._held and not self._paused and not self._done:
            data = self._held.popleft()
            self._held_bytes -= len(data)
            self._write(data)

    def _fill_ended(self, _: object) -> None:
        if self._done:
            return
        fill = self.fill
        if fill.state is FillState.DONE:
            # What is held is already in memory: it goes to the transport.
            while self._held:
                self._write(self._held.popleft())
            self._held_bytes = 0
            self._write(self._last)
            self._end("done")
        elif fill.resume_upstream:
            self._end(None)
            self.request.unregisterProducer()
            self.on_end("resumed", self.sent)
            self.resume(self.sent)
        else:
            self._end("fill-failed")

    def _to_file(self) -> None:
        """Too far behind, or the kernel fills the file from now on: the rest
        comes from the file, like a joiner's."""
        if self._done:
            return
        offset = self.sent
        self._done = True
        self.fill.untap()
        self.watchdog.stop()
        self._held.clear()
        self._held_bytes = 0
        self.request.unregisterProducer()
        sent = self.sent
        read_fill(
            self.request,
            self.fill,
            self.fd,  # the sender owns it now
            offset,
            self.reactor,
            self.pool,
            self.idle_timeout,
            lambda outcome, more: self.on_end(outcome, sent + more),
            self.resume,
        )

    def _end(self, outcome: str | None) -> None:
        """Stop; ``outcome`` None: the caller hands the client over."""
        self._done = True
        self.fill.untap()
        self.watchdog.stop()
        self._held.clear()
        self._held_bytes = 0
        os.close(self.fd)
        if outcome is None:
            return
        if not client_gone(self.request):
            self.request.unregisterProducer()
            if outcome == "done":
                self.on_end(outcome, self.sent)  # first: the access line
                self.request.finish()
                return
            abort_client(self.request)  # a short read, never a wrong body
        self.on_end(outcome, self.sent)

    def _idle(self) -> None:
        if not self._done:
            self._end("idle-timeout")

    def _client_finished(self, _: object) -> None:
        if not self._done:
            self._end(None)
            self.on_end("client-gone", self.sent)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True
