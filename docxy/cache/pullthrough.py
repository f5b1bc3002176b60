"""The pull-through cache as the Resource tree sees it: blobs and manifests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Request

from ..names import Kind
from ..relay import Exchange, Relay
from ..routing import Mirror, Target
from ..upstream_client import UpstreamClient, UpstreamError
from .access import AccessChecker
from .blob_cache import BlobCache
from .blob_store import BlobStore
from .counters import Counters
from .disk_health import DiskHealth
from .evidence import Evidence
from .ledger import PRUNE_INTERVAL, Ledger
from .manifest_cache import ManifestCache
from .manifest_claim import ManifestClaims
from .manifest_store import ManifestStore, TagIndex
from .offline import TokenBook, answer_ping, keep_challenges

log = Logger()

# With workers: how often each one takes in what the others cached and
# evicted (seconds), so the size bound holds for all of them together.
RESCAN_INTERVAL = 30.0


def _rescan(blobs: BlobCache, reactor: Any) -> Any:
    scan = deferToThreadPool(reactor, blobs.disk.threads(), blobs.store.scan)
    return scan.addCallback(blobs.store.refresh)


class PullThroughCache(MultiService):
    """The cache as the Resource tree sees it (blobs, manifests, the rest
    relayed), and as the Service that owns its disk threads, so twistd
    starts and stops them with Docxy.
    """

    name = "cache"

    def __init__(
        self,
        blobs: BlobCache,
        manifests: ManifestCache,
        counters: Counters,
        relay: Relay,
        tokens: TokenBook,
    ) -> None:
        super().__init__()
        self.blobs = blobs
        self.manifests = manifests
        self.counters = counters
        self.relay = relay
        self.tokens = tokens
        blobs.disk.setServiceParent(self)

    async def serve(self, request: Request, exchange: Exchange, target: Target) -> None:
        kind = target.route.kind
        if kind is Kind.BLOBS:
            await self.blobs.serve(request, exchange, target)
        elif kind is Kind.MANIFESTS:
            await self.manifests.serve(request, exchange, target)
        else:
            try:
                await self.relay.relay(request, exchange)
            except UpstreamError:
                if kind is not Kind.BASE or not answer_ping(request, target.mirror):
                    raise


def build_cache(
    directory: Path,
    max_size: int | None,
    auth_ttl: float,
    freshness: float,
    relay: Relay,
    client: UpstreamClient,
    reactor: Any,
    idle_timeout: float,
    mirrors: Mapping[str, Mirror],
    shared: bool = False,
) -> PullThroughCache:
    """``shared``: other worker processes use this directory too."""
    counters = Counters()
    health = DiskHealth(directory, reactor)
    ledger = Ledger(directory, reactor)
    # One warning for the directory, however its trouble was first seen.
    ledger.on_error(lambda error: reactor.callFromThread(health.failed, error))
    reactor.addSystemEventTrigger("during", "shutdown", ledger.close)
    LoopingCall(ledger.prune).start(PRUNE_INTERVAL, now=False).addErrback(
        lambda f: log.failure("pruning the ledger failed", f)
    )
    keep_challenges(ledger, mirrors)
    tokens = TokenBook(ledger)
    store = BlobStore(directory, max_size, counters)
    log.info(
        "cache {directory}: {entries} blobs, {total} of at most {max_size} bytes",
        directory=str(directory),
        entries=len(store.entries),
        total=store.total,
        max_size=store.max_size,
    )
    log.info(
        "ledger: {public} public repositories, {grants} grants, {tags} tags known",
        public=len(ledger.public),
        grants=len(ledger.grants),
        tags=len(ledger.tags),
    )
    access = AccessChecker(client, Evidence(ledger, tokens, reactor, auth_ttl))
    blobs = BlobCache(
        store,
        relay,
        client,
        access,
        reactor,
        idle_timeout,
        counters,
        health,
    )
    blobs.shared = shared
    if shared:
        LoopingCall(_rescan, blobs, reactor).start(
            RESCAN_INTERVAL, now=False
        ).addErrback(lambda f: log.failure("rescanning the cache failed", f))
    manifest_store = ManifestStore(directory, blobs.disk)
    manifests = ManifestCache(
        manifest_store,
        TagIndex(ledger, manifest_store),
        relay,
        client,
        access,
        reactor,
        freshness,
        counters,
        health,
        ManifestClaims(store.tmp, reactor) if shared else None,
    )
    return PullThroughCache(blobs, manifests, counters, relay, tokens)
