"""Proxied bodies on plain TCP: upstream socket to client socket, past Twisted.

Relaying a blob through Twisted's transports costs, per chunk, a new bytes
object from ``recv``, the calls that pass it along, the transport's buffer
and its ``b"".join``. When both sockets are plain TCP and the upstream
body has a Content-Length, :class:`SocketRelay` moves the body itself, on
the reactor thread, one of two ways, by where the client is:

- **a client on another host or network namespace**: ``splice(2)``,
  upstream socket -> pipe -> client socket in the kernel, no copy in
  Docxy (:class:`PipeMover`);
- **a client on loopback** (dockerd or containerd on the same host, the
  node-local DaemonSet's containerd): a copy through one reused buffer,
  ``recv_into`` and ``send`` (:class:`BufferMover`). Spliced segments are
  made of the upstream's received pages, and a loopback receiver spent
  about twice the kernel time taking them in (curl: 0.17-0.20 s of system
  time per 500 MiB against 0.08-0.10 from nginx), and more were dropped
  and resent.

Measured with alternating rounds of a 500 MiB blob, as ratios to reading
the upstream directly: on loopback, splice 0.72x and 0.77x, the buffer
0.82x and 0.89x, nginx ``proxy_pass`` (256 KiB buffers) 0.84x and 0.90x;
a client in a network namespace over a veth pair, splice 0.82x, the
buffer 0.76x, nginx 0.74x (``benchmarks/README.md``). The copy costs
Docxy about 0.14 CPU-s/GiB more.

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

Backpressure is the pipe or the buffer: at most 1 MiB is held, and while
the client does not read, the upstream socket is not read either. At most
:data:`MAX_RELAYS` run at once in a process; other bodies stay with
Twisted's transports. A client that disconnects stops the relay (the
transport stops its producer); an upstream that ends early or fails
closes the client's connection at once, so it sees a short read, never a
complete-looking body.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPullProducer, IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from .pipes import open_pipe
from .plain_tcp import KernelTransport, ProducerLoan
from .upstream_client import RawBody

# Bodies shorter than this stay with Twisted's transports (taking over costs calls).
RELAY_MIN = 1024 * 1024
# Bytes held per body at most, in the pipe or the buffer: what a slow
# client can keep in memory. (A 256 KiB buffer was slower; 4 MiB no faster.)
HELD = 1024 * 1024
# At most this much per readiness event: other connections get their turn.
TURN_BYTES = 8 * 1024 * 1024
# Relays at once, at most: beyond, bodies stay with Twisted's transports
# (backpressure bounds those too), so slow clients cannot make a worker hold
# more than this many pipes or buffers.
MAX_RELAYS = 32
# Buffers kept for the next body, so a relay does not fault in a new one.
SPARE_BUFFERS = 4

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
_spare: list[bytearray] = []
_live = 0  # relays holding a pipe or a buffer


def can_relay(reactor: object) -> bool:
    """Whether the reactor lets a relay register as a socket's reader."""
    return IReactorFDSet.providedBy(reactor)


def on_loopback(address: object) -> bool:
    """Is this peer on the same host's loopback (or a Unix socket)?"""
    if not isinstance(address, IPv4Address | IPv6Address):
        return True  # a Unix socket: on this host
    try:
        ip = ipaddress.ip_address(address.host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class PipeMover:
    """Upstream socket -> pipe -> client socket by ``splice(2)``: no copy."""

    # A refused splice into the pipe may mean the pipe is full (it counts
    # pages, not bytes), not that the socket is empty.
    full_when_refused = True

    def __init__(self, upstream: int, client: int, pipe: tuple[int, int], size: int):
        self.upstream, self.client = upstream, client
        self.pipe, self.size = pipe, size
        self.held = 0

    def room(self) -> int:
        return self.size - self.held

    def take(self, count: int) -> int:
        moved = os.splice(self.upstream, self.pipe[1], count, flags=_FLAGS)
        self.held += moved
        return moved

    def give(self) -> int:
        moved = os.splice(self.pipe[0], self.client, self.held, flags=_FLAGS)
        self.held -= moved
        return moved

    def close(self) -> None:
        for fd in self.pipe:
            os.close(fd)


class BufferMover:
    """``recv_into`` one reused buffer, ``send`` from it: for loopback clients."""

    full_when_refused = False

    def __init__(self, upstream: socket.socket, client: socket.socket) -> None:
        self.upstream, self.client = upstream, client
        self.buffer = memoryview(_spare.pop() if _spare else bytearray(HELD))
        self.filled = 0  # bytes received into the buffer
        self.sent = 0  # of which the client has this much

    @property
    def held(self) -> int:
        return self.filled - self.sent

    def room(self) -> int:
        return HELD - self.filled

    def take(self, count: int) -> int:
        moved = self.upstream.recv_into(self.buffer[self.filled :], count)
        self.filled += moved
        return moved

    def give(self) -> int:
        moved = self.client.send(self.buffer[self.sent : self.filled])
        self.sent += moved
        if self.sent == self.filled:
            self.filled = self.sent = 0
        return moved

    def close(self) -> None:
        data = self.buffer.obj
        self.buffer.release()
        if len(_spare) < SPARE_BUFFERS and isinstance(data, bytearray):
            _spare.append(data)


def _mover(upstream: Any, client: Any) -> PipeMover | BufferMover | None:
    """The way for this client, or None if neither can be set up."""
    if on_loopback(client.getPeer()):
        sockets = getattr(upstream, "socket", None), getattr(client, "socket", None)
        if all(isinstance(sock, socket.socket) for sock in sockets):
            return BufferMover(*sockets)  # type: ignore[arg-type]
        return None
    if not hasattr(os, "splice"):
        return None
    pipe = open_pipe(HELD, nonblocking=True)
    if pipe is None:
        return None
    if pipe[1] < HELD // 4:  # past the user's pipe-pages limit: it would crawl
        for fd in pipe[0]:
            os.close(fd)
        return None
    return PipeMover(upstream.fileno(), client.fileno(), *pipe)


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
        self.left = body.remaining - 1  # the last byte goes through the parser
        self.relayed = 0
        self.mover: PipeMover | BufferMover | None = None
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
        self.mover = _mover(upstream, self.client)
        if self.mover is None:
            return False
        _live += 1
        upstream.stopReading()
        self._loan.take(self)
        self._read_upstream(True)
        self.client.startWriting()  # doWrite flushes what is buffered, then asks us
        return True

    # IReadDescriptor: the upstream socket is readable
    def fileno(self) -> int:
        # The upstream's own answer, -1 once it closed its socket: the
        # reactor unregisters by descriptor number, and a number reused by
        # a new connection must never be taken for this one's.
        return int(self.upstream.fileno())

    def logPrefix(self) -> str:
        return "SocketRelay"

    def doRead(self) -> None:
        mover = self.mover
        if self._done or mover is None:
            return
        budget = min(TURN_BYTES, self.left)
        while budget > 0 and mover.room() > 0:
            try:
                count = mover.take(min(budget, mover.room()))
            except BlockingIOError:
                if mover.held and mover.full_when_refused:
                    self._read_upstream(False)  # again once it is drained
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
            budget -= count
        if self.left == 0 or mover.room() <= 0:
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
        mover = self.mover
        assert mover is not None
        budget = TURN_BYTES
        while mover.held and budget > 0:
            try:
                count = mover.give()
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # the client is gone: its connection's end follows
                self._close()
                self.client.abortConnection()
                return
            self.relayed += count
            budget -= count
            self.request.sentLength += count
            self.moved(count)
        if mover.held:
            self.client.startWriting()  # call again when the socket is writable
        elif self.left == 0:
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
        mover, self.mover = self.mover, None
        if mover is not None:
            _live -= 1
            mover.close()
