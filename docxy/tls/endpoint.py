"""The ``acme:`` server endpoint: TLS on any plain endpoint, certificates by ACME.

``listen`` is where the side effects start (state directory, stored
certificates, the placeholder, then the background issuing). Listeners with
the same state directory share one certificate manager, so two ``acme:``
ports (say IPv4 and IPv6) never order the same names twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from ..config_values import endpoint_failure
from .manager import CertificateManager
from .ports import PortWithKeeper
from .spec import OPTIONS, AcmeSpec, AcmeSpecError, parse_acme

_MANAGERS: dict[Path, tuple[CertificateManager, int]] = {}


def acquire_manager(reactor: Any, spec: AcmeSpec) -> CertificateManager:
    """The manager of ``spec``'s state directory, loaded (made on first use)."""
    key = spec.state_dir.resolve()
    if key in _MANAGERS:
        manager, users = _MANAGERS[key]
        if manager.spec != spec:
            raise AcmeSpecError(
                f"two acme: listeners share {str(spec.state_dir)!r} with "
                "different options; give them the same options or separate "
                "directories"
            )
        _MANAGERS[key] = (manager, users + 1)
        return manager
    manager = CertificateManager(reactor, spec)
    manager.load()
    _MANAGERS[key] = (manager, 1)
    return manager


def release_manager(manager: CertificateManager) -> defer.Deferred[Any]:
    """One user fewer; the last one stops the manager."""
    key = manager.spec.state_dir.resolve()
    _, users = _MANAGERS[key]
    if users > 1:
        _MANAGERS[key] = (manager, users - 1)
        return defer.succeed(None)
    del _MANAGERS[key]
    return manager.stop()


@implementer(IStreamServerEndpoint)
class AcmeEndpoint:
    """TLS on ``wrapped`` with certificates an ACME CA issues and renews.

    Listeners with one state directory share one certificate manager, so
    no name is ordered twice.
    """

    def __init__(
        self, reactor: Any, spec: AcmeSpec, wrapped: IStreamServerEndpoint
    ) -> None:
        self.reactor = reactor
        self.spec = spec
        self.wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        return defer.ensureDeferred(self._listen(factory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        manager = acquire_manager(self.reactor, self.spec)
        assert manager.contexts is not None
        try:
            port = await wrapServerTLS(manager.contexts, self.wrapped).listen(factory)
        except BaseException:
            await release_manager(manager)
            raise
        manager.start()
        return PortWithKeeper(port, lambda: release_manager(manager))


def parse_endpoint(reactor: Any, *args: str, **kwargs: str) -> AcmeEndpoint:
    """``acme:`` string arguments -> endpoint; every error is one line."""
    spec, sub = parse_acme(args, kwargs)
    try:
        wrapped = serverFromString(reactor, sub)
    except Exception as e:
        unknown = sorted(set(kwargs) - OPTIONS)
        hint = (
            f" (acme: options are {', '.join(sorted(OPTIONS))}; "
            f"{', '.join(unknown)} went to the wrapped endpoint)"
            if unknown
            else ""
        )
        raise AcmeSpecError(
            f"wrapped endpoint {sub!r}: {endpoint_failure(sub, e)}{hint}"
        ) from None
    return AcmeEndpoint(reactor, spec, wrapped)
