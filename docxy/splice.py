"""Proxied bodies on plain TCP: upstream socket to client socket in the kernel.

Relaying a blob through Python costs two copies per byte (``recv`` into a
new bytes object, ``send`` out of it) plus the calls between them. When
both sockets are plain TCP and the upstream body has a Content-Length,
:class:`Splice` moves the body with ``splice(2)`` through a pipe instead:
the bytes never enter the process.

It takes both sockets over for the length of the body, through Twisted's
own hooks, and gives them back before the body's last byte:

- the upstream connection stops reading (``stopReading``) and the splice
  registers as the reader of its socket; the HTTP client's parser is told
  how many bytes went past it (:meth:`~docxy.upstream_client.RawBody.consumed`),
  and the last byte is left to it, so the response ends as usual
  (``ResponseDone``, the connection back to the pool);
- on the client side it is the transport's *pull* producer, as
  :class:`~docxy.cache.kernel_sender.KernelSender` is: it is asked for more
  only when the transport's buffer (the headers, the body's first bytes)
  is empty and the socket writable, so nothing overtakes what was written.

Backpressure is the pipe: at most :data:`PIPE_SIZE` is in flight, and
while the client does not read, the upstream socket is not read either.
A client that disconnects stops the splice (the transport stops its
producer); an upstream that ends early or fails closes the client's
connection at once, so it sees a short read, never a complete-looking
body.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPullProducer, IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from .plain_tcp import KernelTransport, ProducerLoan
from .upstream_client import RawBody

# Bodies shorter than this still go through Python (setting up costs calls).
SPLICE_MIN = 1024 * 1024
# Bytes in the pipe at most: the memory a slow client can hold in the kernel.
PIPE_SIZE = 1024 * 1024
# At most this much per readiness event: other connections get their turn.
TURN_BYTES = 8 * 1024 * 1024

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0


def open_pipe(size: int, nonblocking: bool) -> tuple[tuple[int, int], int] | None:
    """A pipe (read end, write end) for ``splice(2)`` and its capacity: ``size``
    if the kernel allows, its default otherwise; None if none can be made."""
    flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    try:
        read, write = os.pipe2(flags)
    except OSError:
        return None
    try:
        capacity = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        capacity = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
    return (read, write), capacity


def can_splice(reactor: object) -> bool:
    return hasattr(os, "splice") and IReactorFDSet.providedBy(reactor)


@implementer(IPullProducer, IReadDescriptor)
class Splice:
    """Moves ``body``'s bytes but its last to ``client`` (a plain TCP transport
    whose producer is ``request``'s channel); ``moved(n)`` for each step;
    ``failed(why)`` when the upstream ended early (the client is dropped)."""

    def __init__(
        self,
        request: Request,
        client: KernelTransport,
        body: RawBody,
        reactor: Any,
        moved: Callable[[int], None],
        failed: Callable[[str], None],
    ) -> None:
        self.request = request
        self.client = client
        self.body = body
        self.reactor = reactor
        self.moved = moved
        self.failed = failed
        self.upstream = body.transport
        self._fd = self.upstream.fileno()
        self.left = body.remaining - 1  # the last byte goes through the parser
        self.spliced = 0
        self.in_pipe = 0
        self._pipe: tuple[int, int] | None = None
        self._pipe_size = PIPE_SIZE
        self._reading = False
        self._flushed = False  # the client transport's own buffer went out
        self._loan = ProducerLoan(client)
        self._done = False

    def start(self) -> bool:
        """Take both sockets over; False (nothing changed) if it cannot."""
        upstream = self.upstream
        if self.left < SPLICE_MIN or upstream in self.reactor.getWriters():
            return False
        pipe = open_pipe(PIPE_SIZE, nonblocking=True)
        if pipe is None:
            return False
        self._pipe, self._pipe_size = pipe
        upstream.stopReading()
        self._loan.take(self)
        self._read_upstream(True)
        self.client.startWriting()  # doWrite flushes what is buffered, then asks us
        return True

    # IReadDescriptor: the upstream socket is readable
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "Splice"

    def doRead(self) -> None:
        if self._done or self._pipe is None:
            return
        budget = min(TURN_BYTES, self.left)
        while budget > 0 and self.in_pipe < self._pipe_size:
            try:
                count = os.splice(
                    self._fd,
                    self._pipe[1],
                    min(budget, self._pipe_size - self.in_pipe),
                    flags=_FLAGS,
                )
            except BlockingIOError:
                if self.in_pipe:  # the pipe may be full (it counts pages)
                    self._read_upstream(False)
                break
            except InterruptedError:
                continue
            except OSError as e:
                self._upstream_failed(os.strerror(e.errno or 0))
                return
            if count == 0:
                self._upstream_failed("upstream closed the connection")
                return
            self.left -= count
            self.in_pipe += count
            budget -= count
        if self.left == 0 or self.in_pipe >= self._pipe_size:
            self._read_upstream(False)
        if self._flushed:
            self._drain()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the upstream socket hang up."""
        self._reading = False
        self._upstream_failed(reason.getErrorMessage())

    def _read_upstream(self, on: bool) -> None:
        if on and not self._reading:
            self.reactor.addReader(self)
        elif not on and self._reading:
            self.reactor.removeReader(self)
        self._reading = on

    # IPullProducer: the client transport's buffer is empty, its socket writable
    def resumeProducing(self) -> None:
        if self._loan.taking or self._done:
            return
        self._flushed = True
        self._drain()

    def stopProducing(self) -> None:
        """The client connection was lost: the request's own end follows."""
        self._close()

    def _drain(self) -> None:
        assert self._pipe is not None
        out = self.client.fileno()
        budget = TURN_BYTES
        while self.in_pipe and budget > 0:
            try:
                count = os.splice(self._pipe[0], out, self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # the client is gone: its connection's end follows
                self._close()
                self.client.abortConnection()
                return
            self.in_pipe -= count
            self.spliced += count
            budget -= count
            self.request.sentLength += count
            self.moved(count)
        if self.in_pipe:
            self.client.startWriting()  # call again when the socket is writable
        elif self.left == 0:
            self._finish()
        else:
            self._read_upstream(True)

    def _finish(self) -> None:
        """All but the last byte went: the parser and the channel take over."""
        self._close()
        self.body.consumed(self.spliced)
        self._loan.give_back(self)
        self.upstream.startReading()

    def _upstream_failed(self, why: str) -> None:
        if self._done:
            return
        self._close()
        self.failed(why)
        self.upstream.abortConnection()
        self.client.abortConnection()  # a short read, never a wrong body

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        self._read_upstream(False)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
