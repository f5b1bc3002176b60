"""Proxied bodies on plain TCP: upstream socket to client socket, past Twisted.

Relaying a blob through Twisted's transports costs, per chunk, a new bytes
object from ``recv``, the calls that pass it along, the transport's buffer
and its ``b"".join``. When both sockets are plain TCP and the upstream
body has a Content-Length, :class:`SocketRelay` moves the body itself: one
reused buffer (:data:`BUFFER_SIZE`), ``recv_into`` from the upstream socket
and ``send`` to the client's, on the reactor thread.

Why a copy and not ``splice(2)``: an earlier version moved the body socket
-> pipe -> socket in the kernel, with no copy in Docxy at all, and was
slower: the segments it sends are made of the upstream's received pages,
which cost a client on the same host about twice the kernel time to
receive, and it lost and reordered more of them (measured over loopback;
a pod's veth pair hands segments over the same way, not measured). Alternating runs of a
500 MiB blob, Docxy against nginx ``proxy_pass`` (256 KiB buffers) and
direct: splice 0.72x and 0.77x of direct, this buffer 0.82x and 0.89x,
nginx 0.84x and 0.90x (``benchmarks/README.md``). It costs Docxy about
0.14 CPU-s/GiB more than the splice did.

It takes both sockets over for the length of the body, through Twisted's
own hooks, and gives them back before the body's last byte:

- the upstream connection stops reading (``stopReading``) and the relay
  registers as the reader of its socket; the HTTP client's parser is told
  how many bytes went past it (:meth:`~docxy.upstream_client.RawBody.consumed`),
  and the last byte is left to it, so the response ends as usual
  (``ResponseDone``, the connection back to the pool);
- on the client side it is the transport's *pull* producer, as
  :class:`~docxy.cache.kernel_sender.KernelSender` is: it is asked for more
  only when the transport's buffer (the headers, the body's first bytes)
  is empty and the socket writable, so nothing overtakes what was written.

Backpressure is the buffer: at most :data:`BUFFER_SIZE` is held, and while
the client does not read, the upstream socket is not read either. At most
:data:`MAX_RELAYS` run at once in a process; other bodies stay with
Twisted's transports. A client
that disconnects stops the relay (the transport stops its producer); an
upstream that ends early or fails closes the client's connection at once,
so it sees a short read, never a complete-looking body.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPullProducer, IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from .plain_tcp import KernelTransport, ProducerLoan
from .upstream_client import RawBody

# Bodies shorter than this stay with Twisted's transports (taking over costs calls).
RELAY_MIN = 1024 * 1024
# Bytes held per body at most: what a slow client can keep in Docxy's memory.
# (256 KiB was slower; 4 MiB no faster.)
BUFFER_SIZE = 1024 * 1024
# At most this much per readiness event: other connections get their turn.
TURN_BYTES = 8 * 1024 * 1024
# Relays at once, at most: beyond, bodies stay with Twisted's transports
# (backpressure bounds those too), so slow clients cannot make a worker hold
# more than this many buffers.
MAX_RELAYS = 32
# Buffers kept for the next body, so a relay does not fault in a new one.
SPARE_BUFFERS = 4

_spare: list[bytearray] = []
_live = 0  # relays holding a buffer


def can_relay(reactor: object) -> bool:
    """Whether the reactor lets a relay register as a socket's reader."""
    return IReactorFDSet.providedBy(reactor)


def _socket_of(transport: Any) -> socket.socket:
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{transport!r} has no socket")
    return sock


@implementer(IPullProducer, IReadDescriptor)
class SocketRelay:
    """Moves ``body``'s bytes but its last to ``client`` (a plain TCP transport
    whose producer is ``request``'s channel); ``moved(n)`` for each send;
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
        self.relayed = 0
        self._buffer: memoryview | None = None
        self._filled = 0  # bytes received into the buffer
        self._sent = 0  # of which the client has this much
        self._reading = False
        self._flushed = False  # the client transport's own buffer went out
        self._loan = ProducerLoan(client)
        self._done = False

    def start(self) -> bool:
        """Take both sockets over; False (nothing changed) if it cannot."""
        global _live
        upstream = self.upstream
        if self.left < RELAY_MIN or upstream in self.reactor.getWriters():
            return False
        if _live >= MAX_RELAYS:
            return False
        try:
            self._in, self._out = _socket_of(upstream), _socket_of(self.client)
        except TypeError:
            return False
        self._buffer = memoryview(_spare.pop() if _spare else bytearray(BUFFER_SIZE))
        _live += 1
        upstream.stopReading()
        self._loan.take(self)
        self._read_upstream(True)
        self.client.startWriting()  # doWrite flushes what is buffered, then asks us
        return True

    # IReadDescriptor: the upstream socket is readable
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "SocketRelay"

    def doRead(self) -> None:
        if self._done or self._buffer is None:
            return
        budget = min(TURN_BYTES, self.left)
        while budget > 0 and self._filled < BUFFER_SIZE:
            room = min(budget, BUFFER_SIZE - self._filled)
            try:
                count = self._in.recv_into(self._buffer[self._filled :], room)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                self._upstream_failed(e.strerror or str(e))
                return
            if count == 0:
                self._upstream_failed("upstream closed the connection")
                return
            self.left -= count
            self._filled += count
            budget -= count
        if self.left == 0 or self._filled >= BUFFER_SIZE:
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
        assert self._buffer is not None
        budget = TURN_BYTES
        while self._sent < self._filled and budget > 0:
            try:
                count = self._out.send(self._buffer[self._sent : self._filled])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # the client is gone: its connection's end follows
                self._close()
                self.client.abortConnection()
                return
            self._sent += count
            self.relayed += count
            budget -= count
            self.request.sentLength += count
            self.moved(count)
        if self._sent < self._filled:
            self.client.startWriting()  # call again when the socket is writable
            return
        self._sent = self._filled = 0
        if self.left == 0:
            self._finish()
        else:
            self._read_upstream(True)

    def _finish(self) -> None:
        """All but the last byte went: the parser and the channel take over."""
        self._close()
        self.body.consumed(self.relayed)
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
        global _live
        if self._done:
            return
        self._done = True
        self._read_upstream(False)
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            _live -= 1
            data = buffer.obj
            buffer.release()
            if len(_spare) < SPARE_BUFFERS and isinstance(data, bytearray):
                _spare.append(data)
