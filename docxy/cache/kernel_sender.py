"""Cache hits on plain TCP: the file goes to the socket with ``sendfile(2)``.

Twisted's transports have no sendfile, so the sender borrows the
transport's write side for the length of the body, through the transport's
own producer protocol:

1. the response headers are written through the Request as usual, so they
   sit in the transport's buffer;
2. the channel (the transport's streaming producer) is unregistered and the
   sender registers as a *pull* producer in its place. A transport asks its
   pull producer for more only from ``doWrite``, when its buffer is empty
   and the socket was writable: so no sendfile can overtake the headers or
   anything else still buffered;
3. each ``resumeProducing`` sends from the file until the socket would
   block (a partial count or ``BlockingIOError``), or up to
   :data:`TURN_BYTES` so other connections get their turn, then asks the
   transport to call again when the socket is writable (``startWriting``);
4. at the end the channel gets its producer slot back and the Request is
   finished (or the connection aborted: a short read, never a wrong body).

A client that disconnects stops the sender (the transport stops its
producer on connection loss) and the file is closed; one that reads
nothing is dropped after ``idle_timeout``. Bytes sent count in the
Request's ``sentLength``, so the access log and metrics see them. The
kernel holds no more than the socket's send buffer for a slow client.

A fill's growing file is sent the same way (``fill``): no further than
the fill has written, less its last byte until the digest matched (a
mismatch is a short read, as for every reader of a fill); when the sender
has caught up it waits for the fill (:meth:`~docxy.cache.fill.Fill.listen`)
instead of the socket. If the fill fails such that its readers go on
from the upstream (``resume_upstream``: its disk failed, another worker's
fill stalled), ``resume(offset)`` takes the client over.

The seam for tests: the transport is anything with the few methods
:class:`~docxy.plain_tcp.KernelTransport` names, and ``sendfile`` is a parameter.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from ..plain_tcp import KernelTransport, ProducerLoan
from ..streaming import IdleWatchdog, abort_client, client_gone
from .fill import Fill, FillState

log = Logger()

# At most this much per writable event: other connections get their turn.
TURN_BYTES = 8 * 1024 * 1024

SendFile = Callable[[int, int, int, int], int]


@implementer(IPullProducer)
class KernelSender:
    """Sends bytes ``[start, end)`` of the open file ``fd`` (which it owns)."""

    def __init__(
        self,
        request: Request,
        transport: KernelTransport,
        fd: int,
        start: int,
        end: int,
        clock: IReactorTime,
        idle_timeout: float,
        on_end: Callable[[str, int], None] = lambda outcome, sent: None,
        sendfile: SendFile | None = None,
        fill: Fill | None = None,
        resume: Callable[[int], None] | None = None,
    ) -> None:
        """``sendfile``: ``os.sendfile`` unless a test gives its own; ``fill``:
        the fill still writing the file, ``resume`` if it loses its disk."""
        self.request = request
        self.fill = fill
        self.resume = resume
        self._listening = False
        self.transport = transport
        self.fd = fd
        self.offset = start
        self.end = end
        self.on_end = on_end
        self.sendfile = sendfile or os.sendfile
        self.sent = 0
        self.watchdog = IdleWatchdog(clock, idle_timeout, self._idle)
        self._loan = ProducerLoan(transport)
        self._done = False
        # Waiting for the socket to be writable (a test looks at this).
        self.waiting = False
        request.notifyFinish().addBoth(self._client_finished)

    def start(self) -> None:
        self.request.write(b"")  # the headers, into the transport's buffer
        if self._done or client_gone(self.request):
            self._finish("client-gone")
            return
        self._loan.take(self)
        self.watchdog.start()
        self._wait()  # doWrite flushes what is buffered, then resumes us

    def _wait(self) -> None:
        self.waiting = True
        self.transport.startWriting()

    # IPullProducer: the transport's buffer is empty and the socket writable
    def resumeProducing(self) -> None:
        if self._loan.taking or self._done:
            return
        self.waiting = False
        fill = self.fill
        if fill is not None and fill.state is FillState.FAILED:
            self._fill_failed(fill)
            return
        limit = self._limit()
        out = self.transport.fileno()
        budget = TURN_BYTES
        while self.offset < limit:
            count = min(limit - self.offset, budget)
            try:
                sent = self.sendfile(out, self.fd, self.offset, count)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                self._failed(e)
                return
            if sent == 0:  # the file ended early: it shrank under us
                self._finish("short-file")
                return
            self.offset += sent
            self.sent += sent
            self.request.sentLength += sent
            self.watchdog.touch()
            budget -= sent
            if sent < count or budget <= 0:
                break  # the socket is full, or others' turn
        if self.offset >= self.end:
            self._finish("done")
        elif self.offset >= limit and fill is not None:
            self._listen(fill)  # caught up with the fill: wait for it
        else:
            self._wait()

    def _limit(self) -> int:
        """How far may be sent now: a fill's last written byte waits."""
        fill = self.fill
        if fill is None or fill.state is FillState.DONE:
            return self.end
        return min(self.end - 1, fill.on_disk - 1)

    def _listen(self, fill: Fill) -> None:
        if not self._listening:
            self._listening = True
            fill.listen(self._more_written)

    def _more_written(self) -> None:
        self._listening = False
        if not self._done:
            self._wait()

    def _fill_failed(self, fill: Fill) -> None:
        if not fill.resume_upstream or self.resume is None:
            self._finish("fill-failed")
            return
        # The rest from the upstream: the channel gets its slot back first.
        resume, offset = self.resume, self.offset
        gone = client_gone(self.request)
        self._end("client-gone" if gone else "resumed")
        self._loan.give_back(self)
        if not gone:
            resume(offset)

    def stopProducing(self) -> None:
        """The transport lost its connection."""
        self._end("client-gone")

    def _failed(self, error: OSError) -> None:
        if error.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            self._finish("client-gone")  # it closed before we noticed
            return
        log.warn("sendfile failed: {why}", why=os.strerror(error.errno or 0))
        self._finish("send-error")

    def _idle(self) -> None:
        log.warn(
            "no progress for {timeout}s after {bytes} bytes of a cached blob; "
            "aborting transfer",
            timeout=self.watchdog.timeout,
            bytes=self.sent,
        )
        self._finish("idle-timeout")

    def _finish(self, outcome: str) -> None:
        if self._done:
            return
        self._end(outcome)
        self._loan.give_back(self)
        if not client_gone(self.request):
            if outcome == "done":
                self.request.finish()
            else:
                abort_client(self.request)  # a short read, never a wrong body

    def _end(self, outcome: str) -> None:
        if self._done:
            return
        self._done = True
        self.waiting = False
        self.watchdog.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.on_end(outcome, self.sent)

    def _client_finished(self, result: object) -> None:
        self._end("client-gone")
