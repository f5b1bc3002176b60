"""HTTP and time in memory: a Resource behind treq's RequestTraversalAgent.

For the logic whose interesting cases are timeouts, stalls and cut
connections: the client under test gets ``agent`` (an IAgent whose
connections are ``iosim`` pumps into a twisted.web Site) and ``clock`` (a
``task.Clock``), so a 60 s timeout is one ``clock.advance(60)`` and
nothing waits real seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

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
