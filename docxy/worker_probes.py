"""``--metrics-port`` with workers: one listener, every worker's series.

A scrape must see all workers, not the one that happened to accept it.
So with workers the supervisor listens on ``metrics-port`` itself, and
each worker serves its own /metrics and /ready on a private Unix socket
(in a directory only Docxy's user can enter). /metrics asks every worker
and answers their series side by side, each sample labelled
``worker="<index>"`` (sum them in queries: ``sum without (worker) (...)``);
/ready is 200 only when every worker is ready; /health is the
supervisor's own. Both answer the same JSON as one process does
(:mod:`docxy.probes`), so a probe reads one Docxy the same with any
number of workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from .metrics import CONTENT_TYPE
from .probes import QuietSite, answer_ready, reason_of
from .resources import HealthResource

# Seconds a worker has to answer the supervisor's scrape.
TIMEOUT = 5.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")


@implementer(IAgentEndpointFactory)
class _Socket:
    def __init__(self, reactor: Any, path: Path) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, str(self.path), timeout=TIMEOUT)


class _Body(Protocol):
    """A worker's answer body; cancelled (by the timeout), it drops the
    connection. Not ``readBody``: its cancel needs an ``abortConnection``
    that Agent's transport proxy lacks (twisted#8227), and it warns so."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, _: defer.Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


async def _get(agent: Agent, what: bytes) -> tuple[int, bytes]:
    response = await agent.request(b"GET", b"http://worker/" + what)
    body = _Body()
    response.deliverBody(body)
    return response.code, await body.done


async def ask(
    reactor: Any, path: Path, what: bytes, timeout: float = TIMEOUT
) -> tuple[int, bytes]:
    """A worker's answer to ``GET /<what>`` on its probes socket, body and
    all within ``timeout`` seconds: a worker that stalls mid-answer must
    not hold the supervisor's /ready or /metrics open."""
    agent = Agent.usingEndpointFactory(reactor, _Socket(reactor, path))
    answer = defer.Deferred.fromCoroutine(_get(agent, what))
    answer.addTimeout(timeout, reactor)
    return await answer


def merge(texts: list[tuple[int, str]]) -> str:
    """Prometheus text of several workers as one: each family once, with
    every worker's samples, each labelled with its worker."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                known = headers.setdefault(family, [])
                if line not in known:
                    known.append(line)
            elif line and not line.startswith("#"):
                samples.setdefault(family, []).append(_labelled(line, worker))
    lines = []
    for family in dict.fromkeys([*headers, *samples]):
        lines += headers.get(family, []) + samples.get(family, [])
    return "\n".join(lines) + "\n"


def _labelled(line: str, worker: int) -> str:
    match = _SAMPLE.match(line)
    if match is None:
        return line
    name, labels, rest = match.groups()
    inner = labels[1:-1] if labels else ""
    label = f'worker="{worker}"' + ("," + inner if inner else "")
    return f"{name}{{{label}}}{rest}"


class _Gather(Resource):
    isLeaf = True

    def __init__(self, reactor: Any, sockets: Callable[[], dict[int, Path]]) -> None:
        super().__init__()
        self.reactor = reactor
        self.sockets = sockets

    def render_GET(self, request: Request) -> int:
        d = defer.Deferred.fromCoroutine(self._answer(request))
        d.addErrback(lambda _: None if request.finished else request.finish())
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        raise NotImplementedError


class _Metrics(_Gather):
    async def _answer(self, request: Request) -> None:
        texts = []
        for index, path in sorted(self.sockets().items()):
            try:
                code, body = await ask(self.reactor, path, b"metrics")
            except Exception:
                continue  # starting or stopping: its series return next time
            if code == 200:
                texts.append((index, body.decode("utf-8", "replace")))
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.write(merge(texts).encode())
        request.finish()


class _Ready(_Gather):
    async def _answer(self, request: Request) -> None:
        problems = []
        sockets = sorted(self.sockets().items())
        for index, path in sockets:
            try:
                code, body = await ask(self.reactor, path, b"ready")
            except Exception as e:
                code, body = 503, (str(e) or type(e).__name__).encode()
            if code != 200:
                problems.append(f"worker {index}: {reason_of(body)}")
        if not sockets:
            problems.append("no worker running")
        request.write(answer_ready(request, "; ".join(problems) or None))
        request.finish()


def workers_site(reactor: Any, sockets: Callable[[], dict[int, Path]]) -> Site:
    """The supervisor's ``--metrics-port`` listener."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(reactor, sockets))
    root.putChild(b"ready", _Ready(reactor, sockets))
    root.putChild(b"health", HealthResource())
    return QuietSite(root)
