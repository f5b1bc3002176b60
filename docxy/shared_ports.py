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
TLS with the same certificate files. An ``acme:`` port's wrapped socket
too: the supervisor runs its certificate manager, and each worker serves
the certificates it stores (:mod:`docxy.tls.shared`). ``unix:`` sockets
(a stopping worker would unlink the path of the others) are not shared:
they need ``--workers 1``.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .tls.endpoint import AcmeEndpoint
from .tls.shared import FollowerEndpoint
from .tls.spec import AcmeSpec, AcmeSpecError, parse_acme

_SHAREABLE = ("tcp", "tcp6", "ssl", "systemd")


def shareable(port: str) -> bool:
    """Can worker processes share this endpoint string's socket?"""
    kind, _, rest = port.partition(":")
    if kind == "systemd":
        return "domain=UNIX" not in rest
    if kind == "acme":
        wrapped = _acme_wrapped(port)
        return wrapped is not None and shareable(wrapped)
    return kind in _SHAREABLE


def _acme_wrapped(port: str) -> str | None:
    """The endpoint string an ``acme:`` port wraps (None: not parseable)."""
    try:
        return _acme_parts(port)[1]
    except AcmeSpecError:
        return None


def acme_spec(port: str) -> AcmeSpec | None:
    """An ``acme:`` port's spec (None for any other port); raises
    AcmeSpecError for a bad one."""
    return _acme_parts(port)[0] if port.partition(":")[0] == "acme" else None


def _acme_parts(port: str) -> tuple[AcmeSpec, str]:
    # Twisted's own splitting of an endpoint string (as serverFromString).
    from twisted.internet.endpoints import _parse

    args, kwargs = _parse(port.partition(":")[2])
    return parse_acme(args, kwargs)


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, not the host's,
    and no more than its cgroup's CPU quota (a container's CPU limit)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = max(1, os.cpu_count() or 1)
    quota = _cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cpu_quota(cgroup: Path) -> float | None:
    """Cores' worth of CPU time the cgroup allows (v2 cpu.max, v1 CFS), or None."""
    try:
        limit, _, every = (cgroup / "cpu.max").read_text().partition(" ")
        return None if limit.strip() == "max" else int(limit) / int(every)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


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
    if isinstance(endpoint, AcmeEndpoint):  # TLS is the workers'; the CA's is ours
        endpoint = endpoint.wrapped
    listening = listen_now(endpoint)
    listening.stopReading()  # the workers accept, never the supervisor
    fd = listening.fileno()
    os.set_inheritable(fd, True)
    return listening, SharedSocket(fd, int(listening.addressFamily))


def listen_now(endpoint: IStreamServerEndpoint) -> Any:
    """The listening port of ``endpoint``, which accepts nobody yet; raises
    what ``listen`` raises. tcp:, ssl:, unix: and adopted (systemd:)
    endpoints listen synchronously, without the reactor running."""
    outcome: list[Any] = []
    quiet = Factory.forProtocol(Protocol)
    quiet.noisy = False
    endpoint.listen(quiet).addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class _OneAcceptAtATime:
    """A listening port that accepts one connection per wake-up.

    Twisted accepts up to a hundred queued connections per wake-up (more
    when it got them all): fine for one process, but on a shared socket the
    first worker awake takes every connection queued, and a burst of
    keep-alive clients (``wrk -c64``, a CI farm starting) stays on one core.
    One per wake-up, each worker goes back to waiting after each accept;
    a busy one comes back later than an idle one, so the idle one takes
    more: the load spreads by itself.
    """

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted's growth and shrinking of the batch: not here


@implementer(IStreamServerEndpoint)
class _SharedEndpoint:
    """The inherited socket, accepted on one connection at a time."""

    def __init__(self, reactor: Any, shared: SharedSocket) -> None:
        self.reactor = reactor
        self.shared = shared

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        family = socket.AddressFamily(self.shared.family)
        adopted = AdoptedStreamServerEndpoint(self.reactor, self.shared.fd, family)
        listening: defer.Deferred[IListeningPort] = adopted.listen(factory)
        return listening.addCallback(_one_at_a_time)


def _one_at_a_time(port: IListeningPort) -> IListeningPort:
    cls = type(port)
    port.__class__ = type(f"Shared{cls.__name__}", (_OneAcceptAtATime, cls), {})
    return port


def adopt(reactor: Any, port: str, shared: SharedSocket) -> IStreamServerEndpoint:
    """The endpoint a worker listens with: the inherited socket (in TLS for ssl:)."""
    adopted = _SharedEndpoint(reactor, shared)
    spec = acme_spec(port)
    if spec is not None:
        # The spec alone: the wrapped endpoint is the supervisor's socket
        # (a systemd: one could not even be found here: no LISTEN_FDS).
        return FollowerEndpoint(reactor, spec, adopted)
    if port.partition(":")[0] == "ssl":
        # The same certificate files the supervisor checked at start.
        tls = serverFromString(reactor, port)
        return wrapServerTLS(tls._sslContextFactory, adopted)
    return adopted
