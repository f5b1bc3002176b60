"""Service wiring: listeners, the upstream pool, and the Resource tree."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from . import __version__
from .config import Config
from .forward import Forwarder
from .realm import RealmDirectory
from .resources import build_tree
from .site import DocxySite
from .upstream import UpstreamClient, make_agent

log = Logger()


class _PoolService(Service):
    """Closes idle upstream connections on shutdown."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


class _Announce(Service):
    def __init__(self, config: Config) -> None:
        self.config = config

    def startService(self) -> None:
        super().startService()
        c = self.config
        log.info(
            "Docxy {version}: upstream {upstream} (library/ prefix {prefix}), "
            "token realm {realm}",
            version=__version__,
            upstream=c.upstream,
            prefix="on" if c.library_prefix else "off",
            realm=c.token_realm,
        )
        if not c.public_url_given:
            log.warn(
                "public-url not set: using {url}, which only clients on this host "
                "can reach; set --public-url for others",
                url=c.public_url,
            )


def build_site(config: Config, reactor: Any) -> tuple[DocxySite, HTTPConnectionPool]:
    agent, pool = make_agent(
        reactor,
        ca_file=config.upstream_ca,
        connect_timeout=config.connect_timeout,
        max_connections=config.max_connections,
    )
    client = UpstreamClient(reactor, agent, header_timeout=config.header_timeout)
    realms = RealmDirectory(
        client, config.upstream, config.upstream_realm, config.upstream_service
    )
    forwarder = Forwarder(
        client, reactor, config.idle_timeout, config.token_realm, realms
    )
    root = build_tree(
        forwarder,
        realms,
        config.upstream,
        config.library_prefix,
        config.public_url if config.https_redirect else None,
    )
    site = DocxySite(root, timeout=config.idle_timeout, reactor=reactor)
    return site, pool


def make_service(config: Config, reactor: Any) -> MultiService:
    top = MultiService()
    site, pool = build_site(config, reactor)
    _Announce(config).setServiceParent(top)
    for port in config.ports:
        listener = StreamServerEndpointService(
            endpoints.serverFromString(reactor, port), site
        )
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    _PoolService(pool).setServiceParent(top)
    return top
