"""Docxy's listening ports, and a one-line stop when one cannot listen.

Each port is :func:`twisted.application.strports.service` of its endpoint
string, which listens at privileged start (before twistd sheds root) and
raises there at once if it cannot. Left alone, that exception is a
traceback; a port in use or a port below 1024 without the right to bind
it is configuration, so Docxy says which port and why in one line and
exits.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

_HINTS = {
    errno.EADDRINUSE: "another process listens there",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


class Listeners(MultiService):
    """One strports service per configured endpoint string."""

    def __init__(
        self,
        ports: tuple[str, ...],
        factory: IProtocolFactory,
        reactor: Any,
        endpoints: Sequence[IStreamServerEndpoint] | None = None,
    ):
        """``endpoints``: what to listen with instead of parsing ``ports``
        (a worker's inherited sockets, :mod:`docxy.shared_ports`)."""
        super().__init__()
        self._ports: list[tuple[str, Any]] = []
        for i, port in enumerate(ports):
            if endpoints is None:
                listener = strports.service(port, factory, reactor)
            else:
                listener = StreamServerEndpointService(endpoints[i], factory)
            listener.setServiceParent(self)
            self._ports.append((port, listener))

    def privilegedStartService(self) -> None:
        for port, listener in self._ports:
            try:
                listener.privilegedStartService()
            except Exception as e:
                sys.stderr.write(f"docxy: cannot listen on {port}: {reason(e)}\n")
                sys.stderr.flush()
                raise SystemExit(1) from None


def reason(error: BaseException) -> str:
    """Why listening failed, in words: the OS error and what it usually means."""
    cause = error.socketError if isinstance(error, CannotListenError) else error
    if isinstance(cause, OSError) and cause.errno is not None:
        text = cause.strerror or str(cause)
        hint = _HINTS.get(cause.errno)
        return f"{text} ({hint})" if hint else text
    return str(cause) or type(cause).__name__
