"""Graceful shutdown: stop taking work, let transfers in flight finish.

On SIGTERM twistd stops the services before the reactor drops any
connection, and waits for the Deferreds they return. :class:`Drain` turns
readiness off (load balancers and kubelet stop sending new pulls), while
the listeners stop accepting, and waits until no request is being answered
and no cache fill runs, at most ``timeout`` seconds. What is still running
then is cut: clients see a short read, and an unfinished fill leaves only
its temp file, never an entry (see :mod:`docxy.cache.fill`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from .site import DocxySite

log = Logger()


def _after(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires when ``d`` does, leaving ``d``'s result alone."""
    done: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        if not done.called:
            done.callback(None)
        return result

    d.addBoth(fire)
    return done


def stop_on_sigterm(reactor: Any) -> None:
    """SIGTERM stops the reactor, and twistd exits 0 once the services stopped.

    twistd's own SIGTERM handler makes the process kill itself with SIGTERM
    once stopped; a stop that was asked for and done is a success (exit 0),
    which is what init systems and kubelet expect. Installed after the
    reactor installed its own handlers (at run).
    """
    stopping: list[bool] = []

    def sigterm(number: int, frame: object) -> None:
        if not stopping:
            stopping.append(True)
            reactor.callFromThread(reactor.stop)

    def install() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)

    reactor.callWhenRunning(install)


class Drain(MultiService):
    """Waits for the work in flight when the service stops (see the module).

    Its children stop only after that: the ``--metrics-port`` listener, so
    monitoring sees the drain and ``/ready`` answers 503 meanwhile, and the
    cache, whose disk threads the last transfers still read with.
    """

    def __init__(self, site: DocxySite, timeout: float, reactor: Any) -> None:
        super().__init__()
        self.site = site
        self.timeout = timeout
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        stop_on_sigterm(self.reactor)

    def _fills(self) -> list[Any]:
        cache = self.site.cache
        return [] if cache is None else list(cache.blobs.fills.values())

    async def _drained(self) -> None:
        while self.site.active or self._fills():
            waits = [self.site.idle(), *(_after(f.finished) for f in self._fills())]
            for wait in waits:  # all of them; a cancel stops at the current one
                await wait
        # Every answer is written; let the last bytes reach the clients.
        await self.site.close_connections()

    def stopService(self) -> defer.Deferred[None]:
        if self.site.readiness is not None:
            self.site.readiness.draining = True
        requests, fills = len(self.site.active), len(self._fills())
        if requests or fills:
            log.info(
                "shutting down: waiting up to {timeout:g}s for {requests} "
                "requests and {fills} cache fills in flight",
                timeout=self.timeout,
                requests=requests,
                fills=fills,
            )
        d = defer.Deferred.fromCoroutine(self._drained())
        d.addTimeout(self.timeout, self.reactor)

        def late(failure: Any) -> None:
            failure.trap(defer.TimeoutError)
            log.warn(
                "shutdown-timeout: {requests} requests, {fills} fills and "
                "{connections} connections still open after {timeout:g}s; "
                "closing them",
                requests=len(self.site.active),
                fills=len(self._fills()),
                connections=len(self.site.channels),
                timeout=self.timeout,
            )

        def done(_: object) -> None:
            if requests or fills:
                log.info("shutting down: all transfers done")

        d.addCallbacks(done, late)
        d.addCallback(lambda _: super(Drain, self).stopService())
        return d
