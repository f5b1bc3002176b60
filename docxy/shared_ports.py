"""Listening sockets made once by the supervisor and adopted by every worker.

With ``--workers N`` the supervisor listens on each ``--port`` itself (at
privileged start, so ports below 1024 work as before; a ``systemd:`` port
is the socket systemd passed in), never accepts on it, and hands the
descriptor to each worker it starts. Each worker adopts it
(``adoptStreamPort``) and accepts on it: the kernel gives every
connection to one of the workers waiting in ``accept``. One socket for all
(not ``SO_REUSEPORT``): it is the only way that works for a socket systemd
holds, a worker that restarts never leaves a gap where the port refuses,
and the listen queue is shared, so a busy worker does not hold connections
another could take.

An ``ssl:`` port's socket is shared the same way; each worker wraps it in
TLS with the same certificate files. ``acme:`` ports (their certificate
manager and challenge answers live in one process) and ``unix:`` sockets
(a stopping worker would unlink the path of the others) are not shared:
they need ``--workers 1``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

_SHAREABLE = ("tcp", "tcp6", "ssl", "systemd")


def shareable(port: str) -> bool:
    """Can worker processes share this endpoint string's socket?"""
    kind, _, rest = port.partition(":")
    if kind == "systemd":
        return "domain=UNIX" not in rest
    return kind in _SHAREABLE


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SharedSocket:
    """A listening socket a worker inherits: its descriptor and family."""

    fd: int
    family: int


def bind(reactor: Any, port: str) -> tuple[IListeningPort, SharedSocket]:
    """Listen on ``port`` without accepting; raises what ``listen`` raises.

    The port object stays with the supervisor (it closes the socket at the
    end); workers get the descriptor.
    """
    endpoint = serverFromString(reactor, port)
    outcome: list[Any] = []
    quiet = Factory.forProtocol(Protocol)
    quiet.noisy = False
    endpoint.listen(quiet).addBoth(outcome.append)
    # tcp:, ssl: and adopted (systemd:) endpoints listen synchronously.
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    listening = outcome[0]
    listening.stopReading()  # the workers accept, never the supervisor
    fd = listening.fileno()
    os.set_inheritable(fd, True)
    return listening, SharedSocket(fd, int(listening.addressFamily))


def adopt(reactor: Any, port: str, shared: SharedSocket) -> IStreamServerEndpoint:
    """The endpoint a worker listens with: the inherited socket (in TLS for ssl:)."""
    adopted = AdoptedStreamServerEndpoint(
        reactor, shared.fd, socket.AddressFamily(shared.family)
    )
    if port.partition(":")[0] == "ssl":
        # The same certificate files the supervisor checked at start.
        tls = serverFromString(reactor, port)
        return wrapServerTLS(tls._sslContextFactory, adopted)
    return adopted
