"""A TLS listener that stops what keeps its certificates when it stops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from zope.interface import implementer


@implementer(IListeningPort)
class PortWithKeeper:
    """``port``; its ``stopListening`` also calls ``stop_keeper`` (once): the
    certificate manager of an ``acme:`` port, or a worker's follower."""

    def __init__(
        self,
        port: IListeningPort,
        stop_keeper: Callable[[], defer.Deferred[Any] | None],
    ) -> None:
        self._port = port
        self._stop_keeper: Callable[[], defer.Deferred[Any] | None] | None = stop_keeper

    def startListening(self) -> None:
        self._port.startListening()

    def stopListening(self) -> defer.Deferred[None] | None:
        stop_keeper, self._stop_keeper = self._stop_keeper, None
        waits = [self._port.stopListening()]
        if stop_keeper is not None:
            waits.append(stop_keeper())
        pending = [d for d in waits if d is not None]
        if not pending:
            return None
        return defer.gatherResults(pending).addCallback(lambda _: None)

    def getHost(self) -> Any:
        return self._port.getHost()
