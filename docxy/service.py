"""Service wiring: listeners, the upstream pool, and the Resource tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.client import HTTPConnectionPool

from . import __version__
from .access_setup import build_gate, token_key
from .cache.directory import CacheLock
from .cache.pullthrough import build_cache
from .capacity import raise_soft_limit
from .config import Config
from .drain import Drain
from .forward import Forwarder
from .listeners import Listeners
from .malloc_policy import keep_large_buffers
from .metrics import Metrics
from .mirror_tokens import MirrorTokens
from .probes import Readiness, probes_site
from .pull_budget import PullBudget
from .realm import RealmDirectory
from .relay import Relay
from .resources import HealthResource, build_tree
from .routing import Mirror, Router
from .site import DocxySite
from .start_warnings import start_warnings
from .upstream_client import UpstreamClient, make_agent
from .upstream_set import UpstreamSet

log = Logger()


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process gets from its supervisor (docxy.worker)."""

    index: int
    endpoints: tuple[IStreamServerEndpoint, ...]
    metrics_endpoints: tuple[IStreamServerEndpoint, ...] | None
    cache_lock: CacheLock | None


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
        log.info("Docxy {version}", version=__version__)
        for upstream in c.upstreams:
            log.info(
                "upstream {name}{default}: {url} (library/ prefix {prefix}; "
                "ns {namespaces}; aliases {aliases}; hosts {hosts}), token realm "
                "{realm}",
                name=upstream.name,
                default=" (default)" if upstream.name == c.default_upstream else "",
                url=upstream.url,
                prefix="on" if upstream.library_prefix else "off",
                namespaces=",".join(upstream.namespaces) or "-",
                aliases=",".join(upstream.aliases) or "-",
                hosts=",".join(upstream.hosts) or "-",
                realm=c.ping_realm(upstream),
            )
            if upstream.credentials is not None:
                log.info(
                    "upstream {name}: pulls for anonymous clients with the account "
                    "{user} ({source})",
                    name=upstream.name,
                    user=upstream.credentials.username,
                    source=upstream.credentials.source,
                )
        for warning in start_warnings(c):
            log.warn("{warning}", warning=warning)


def build_site(config: Config, reactor: Any) -> tuple[DocxySite, HTTPConnectionPool]:
    keep_large_buffers()  # before the first blob: see docxy.malloc_policy
    agent, pool = make_agent(
        reactor,
        ca_file=config.upstream_ca,
        connect_timeout=config.connect_timeout,
        max_connections=config.max_connections,
    )
    metrics = Metrics({u.name: u.url for u in config.upstreams})
    readiness = Readiness()
    client = UpstreamClient(
        reactor, agent, header_timeout=config.header_timeout, metrics=metrics
    )
    client.budget = PullBudget(
        reactor, metrics.upstream_name, config.ratelimit_warning, metrics
    )
    gate = build_gate(config, reactor)
    mirrors = {}
    for upstream in config.upstreams:
        realms = RealmDirectory(client, upstream.url, upstream.realm, upstream.service)
        tokens = None
        # With accounts on, client tokens are Docxy's: it pulls with its own.
        if upstream.credentials is not None or gate.accounts_on:
            tokens = MirrorTokens(client, reactor, upstream, realms)
        mirrors[upstream.name] = Mirror(
            upstream,
            config.token_realm(upstream),
            config.ping_realm(upstream),
            realms,
            tokens,
        )
    router = Router(UpstreamSet(config.upstreams, config.default), mirrors)
    relay = Relay(client, reactor, config.idle_timeout)
    forwarder = Forwarder(relay)
    cache = None
    if config.cache_dir is not None:
        cache = build_cache(
            config.cache_dir,
            config.cache_max_size,
            config.cache_auth_ttl,
            config.cache_freshness,
            relay,
            client,
            reactor,
            config.idle_timeout,
            mirrors,
            shared=config.workers > 1,
        )
        metrics.watch_cache(cache)
        readiness.health = cache.blobs.health
    root = build_tree(
        forwarder,
        router,
        config.public_url if config.https_redirect else None,
        cache,
        readiness,
        gate,
    )
    site = DocxySite(
        root, timeout=config.idle_timeout, reactor=reactor, metrics=metrics
    )
    site.header_timeout = config.client_header_timeout
    site.readiness, site.cache = readiness, cache
    return site, pool


class DocxyService(MultiService):
    """Docxy's services, and the lock on its cache directory (held to the end)."""

    cache_lock: CacheLock | None = None
    log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            # twistd's application: its logger uses this observer instead.
            parent.setComponent(ILogObserver, self.log_observer)


def make_service(
    config: Config, reactor: Any, worker: WorkerSetup | None = None
) -> DocxyService:
    """Raises :class:`CacheDirError` if the cache directory is not Docxy's.

    ``worker``: this process is one of ``--workers``; the supervisor holds
    the cache directory's lock and the listening sockets for it.
    """
    top = DocxyService()
    raise_soft_limit()
    if worker is not None:
        top.cache_lock = worker.cache_lock
    elif config.cache_dir is not None:
        # Before the store scans it (and clears its tmp/): one owner only.
        top.cache_lock = CacheLock.acquire(config.cache_dir)
    site, pool = build_site(config, reactor)
    if worker is None or worker.index == 0:
        _Announce(config).setServiceParent(top)
    endpoints = None if worker is None else worker.endpoints
    Listeners(config.ports, site, reactor, endpoints).setServiceParent(top)
    drain = Drain(site, config.shutdown_timeout, reactor)
    drain.setServiceParent(top)
    if site.cache is not None:
        # A child of the drain: its disk threads stop after the last transfer.
        site.cache.setServiceParent(drain)
    if config.metrics_port is not None:
        assert site.metrics is not None and site.readiness is not None
        probes = probes_site(site.metrics, site.readiness, HealthResource())
        # A child of the drain: it stops after the drain, so it can be watched.
        metrics_endpoints = None if worker is None else worker.metrics_endpoints
        Listeners(
            (config.metrics_port,), probes, reactor, metrics_endpoints
        ).setServiceParent(drain)
    _PoolService(pool).setServiceParent(top)
    return top


def supervise(config: Config, reactor: Any, log_to_stdout: bool) -> DocxyService:
    """``--workers N`` (N > 1): the supervisor, holding the cache lock and
    the sockets for its workers (:mod:`docxy.supervisor`). ``log_to_stdout``:
    twistd logs to standard output, where the workers then write their own.

    Raises :class:`CacheDirError` like :func:`make_service`.
    """
    from .cache.ledger import Keys
    from .supervisor import Supervisor

    top = DocxyService()
    raise_soft_limit()
    if config.cache_dir is not None:
        top.cache_lock = CacheLock.acquire(config.cache_dir)
        # Created once, here: workers starting at once would each make one.
        Keys.in_directory(config.cache_dir)
    if config.htpasswd is not None:
        # Created once, here (docxy.preflight checked it can be): every
        # worker must accept every worker's tokens.
        token_key(config)
    supervisor = Supervisor(config, reactor, top.cache_lock, log_to_stdout)
    supervisor.setServiceParent(top)
    if config.metrics_port is not None:
        from .worker_probes import workers_site

        site = workers_site(reactor, supervisor.probe_sockets)
        Listeners((config.metrics_port,), site, reactor).setServiceParent(top)
    return top
