"""HTTP and time in memory, for logic whose cases are timeouts and stalls.

Set-ups that never wait real seconds (a 60 s timeout is one
``advance(60)``):

- :class:`MemoryNet`: a Resource behind treq's ``RequestTraversalAgent``
  and a ``task.Clock``, for a client under test (``docxy-prefetch``).
- :class:`InMemoryDocxy`: Docxy's real Site from ``build_site`` on a
  ``MemoryReactorClock``; clients and the upstream are ``iosim``
  connections whose :class:`Socket` can stop reading like a full TCP
  buffer (``open_client`` connects such a client to any Site).
- :class:`QueuedThreads`: a thread pool whose work runs when the test says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolFactory, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.test.iosim import FakeTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from docxy.config import build_config
from docxy.service import build_site

T = TypeVar("T")
Handler = Callable[[Request], bytes | int]


class Scripted(Resource):
    """Answers by exact path with a handler; records every request path."""

    isLeaf = True

    def __init__(self, routes: dict[str, Handler] | None = None) -> None:
        super().__init__()
        self.routes: dict[str, Handler] = dict(routes or {})
        self.seen: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        self.seen.append(request)
        handler = self.routes.get(request.path.decode())
        if handler is None:
            request.setResponseCode(404)
            return b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}'
        return handler(request)

    def paths(self) -> list[str]:
        return [r.path.decode() for r in self.seen]


@dataclass
class Held:
    """Requests parked unanswered (``NOT_DONE_YET``) until a test answers them."""

    waiting: list[Request] = field(default_factory=list)
    lost: list[Request] = field(default_factory=list)

    def __call__(self, request: Request) -> int:
        self.waiting.append(request)
        request.notifyFinish().addErrback(lambda _: self._lost(request))
        return NOT_DONE_YET

    def _lost(self, request: Request) -> None:
        self.lost.append(request)
        if request in self.waiting:
            self.waiting.remove(request)

    def answer(self, body: bytes, code: int = 200) -> Request:
        request = self.waiting.pop(0)
        request.setResponseCode(code)
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()
        return request


class MemoryNet:
    """One in-memory server and the fake clock both sides share."""

    def __init__(self, root: Resource) -> None:
        self.root = root
        self.agent = RequestTraversalAgent(root)
        self.clock = Clock()

    def pump(self, rounds: int = 50) -> None:
        """Move every byte that can move (each round may open new requests)."""
        for _ in range(rounds):
            self.agent.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()


def result(d: defer.Deferred[T]) -> T:
    """The Deferred's result now; fails the test if it has not fired."""
    outcome: list[T | Failure] = []
    d.addBoth(outcome.append)
    assert outcome, "still waiting"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


# --------------------------------------------------------------------------
# Docxy's real Site, in memory: client and upstream connections are iosim
# pumps, time is the MemoryReactorClock Docxy was built with.
# --------------------------------------------------------------------------


@implementer(IPushProducer)
class Socket(FakeTransport):
    """An iosim transport with TCP's manners where the tests need them.

    It tells an abort from a graceful close, records whether its producer
    side was paused, and can hold its output back (a peer that does not
    read): then a graceful close waits for the bytes to go, as TCP's
    does, and only an abort ends the connection.
    """

    aborted = False
    paused = False
    held = False
    closing = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def loseConnection(self) -> None:
        self.closing = True
        if not (self.held and self.stream):
            self.disconnecting = True

    def getOutBuffer(self) -> bytes | None:
        if self.held:
            return None
        return super().getOutBuffer()  # type: ignore[no-any-return]

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


class RawClient(Protocol):
    """A client that sends bytes and keeps every byte it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True

    @property
    def head(self) -> bytes:
        return bytes(self.received).partition(b"\r\n\r\n")[0]

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    @property
    def body(self) -> bytes:
        return bytes(self.received).partition(b"\r\n\r\n")[2]


@dataclass
class Connection:
    client: RawClient
    docxy_side: Socket
    pump: iosim.IOPump

    def stop_reading(self) -> None:
        """The client reads no more: Docxy's socket buffer fills up, and the
        transport pauses its producer (twisted.web's channel), as TCP does."""
        self.docxy_side.held = True
        producer = self.docxy_side.producer
        assert producer is not None, "nothing registered as producer"
        producer.pauseProducing()

    def read_again(self) -> None:
        self.docxy_side.held = False
        if self.docxy_side.closing:
            self.docxy_side.disconnecting = True
        producer = self.docxy_side.producer
        if producer is not None:
            producer.resumeProducing()


def open_client(
    site: Site, reactor: MemoryReactorClock, path: str, *headers: str
) -> Connection:
    """A client connection to ``site`` that has sent ``GET path`` (not pumped)."""
    client = RawClient()
    server = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    docxy_side = Socket(server, isServer=True)
    client_side = Socket(client, isServer=False)
    pump = iosim.connect(
        server, docxy_side, client, client_side, greet=False, clock=reactor
    )
    lines = "".join(f"{h}\r\n" for h in headers)
    client_side.write(
        f"GET {path} HTTP/1.1\r\nHost: mirror.example\r\n{lines}\r\n".encode()
    )
    return Connection(client, docxy_side, pump)


class QueuedThreads:
    """A thread pool (and the reactor's ``callFromThread``) that runs work
    only when the test says: ``run`` does what is queued, on this thread."""

    def __init__(self) -> None:
        self.queue: list[
            tuple[
                Callable[[bool, object], None],
                Callable[..., object],
                tuple[object, ...],
            ]
        ] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, object], None],
        f: Callable[..., object],
        *args: object,
    ) -> None:
        self.queue.append((on_result, f, args))

    def callInThread(self, f: Callable[..., object], *args: object) -> None:
        self.queue.append((lambda ok, value: None, f, args))

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        f(*args)

    def run(self, limit: int = 1000) -> int:
        """Do queued work (and work it queues) up to ``limit`` calls; how many."""
        done = 0
        while self.queue and done < limit:
            on_result, f, args = self.queue.pop(0)
            try:
                value = f(*args)
            except Exception:
                on_result(False, Failure())
            else:
                on_result(True, value)
            done += 1
        return done


class Wiring:
    """Every ``connectTCP`` on a MemoryReactorClock, pumped over iosim to the
    server factory ``serve`` names for its port; and the clock to move."""

    def __init__(
        self, reactor: MemoryReactorClock, serve: Callable[[int], IProtocolFactory]
    ) -> None:
        self.reactor = reactor
        self.serve = serve
        self.dialled: list[Socket] = []  # the connecting side of each
        self.pumps: list[iosim.IOPump] = []
        self._connected = 0

    def _connect(self) -> None:
        for _, port, factory, _, _ in self.reactor.tcpClients[self._connected :]:
            self._connected += 1
            client = factory.buildProtocol(None)
            server = self.serve(port).buildProtocol(
                IPv4Address("TCP", "127.0.0.1", 40001)
            )
            dialled = Socket(client, isServer=False)
            self.dialled.append(dialled)
            self.pumps.append(
                iosim.connect(
                    server,
                    Socket(server, isServer=True),
                    client,
                    dialled,
                    greet=False,
                    clock=self.reactor,
                )
            )

    def pump(self) -> None:
        """Connect what was dialled and move bytes until nothing moves."""
        for _ in range(100):
            self._connect()
            moved = [p.flush() for p in self.pumps]
            if not any(moved) and self._connected == len(self.reactor.tcpClients):
                return
        raise AssertionError("the in-memory network never settled")

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.pump()


class InMemoryDocxy(Wiring):
    """Docxy's Site from ``build_site`` with an in-memory network and clock.

    The upstream is a twisted.web Resource at ``UPSTREAM``; every connection
    Docxy opens (``connectTCP`` on the memory reactor) is pumped to it.
    """

    UPSTREAM = "http://127.0.0.1:5000"

    def __init__(self, upstream: Resource, **settings: object) -> None:
        reactor = MemoryReactorClock()
        upstream_site = Site(upstream, reactor=reactor)
        super().__init__(reactor, lambda port: upstream_site)
        config = build_config(
            {
                "upstream": self.UPSTREAM,
                "public-url": "https://mirror.example",
                "library-prefix": "on",
                "no-cache": True,
                **settings,
            }
        )
        self.site, self.pool = build_site(config, self.reactor)
        self.connections: list[Connection] = []

    @property
    def upstream_sockets(self) -> list[Socket]:
        """Docxy's side of each upstream connection, in order."""
        return self.dialled

    def get(self, path: str, *headers: str) -> Connection:
        """Open a connection and send ``GET path``; then ``pump``."""
        connection = open_client(self.site, self.reactor, path, *headers)
        self.pumps.append(connection.pump)
        self.connections.append(connection)
        self.pump()
        return connection


class QueuedHashThread:
    """The fill's hash thread (``docxy.cache.hashing.HashThread``), run
    when the test says."""

    def __init__(self) -> None:
        self.threads = QueuedThreads()
        self.reactor = self.threads

    def pool(self) -> QueuedThreads:
        return self.threads

    def stop(self) -> None:
        pass
