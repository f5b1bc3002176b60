"""The blob cache's request path: hit, join an in-flight fill, or start one.

Every blob crosses the upstream link once: the first request for a digest
starts a :class:`~docxy.cache.fill.Fill`; requests for the same digest that
arrive while it runs read from that same transfer; later ones read the
verified file. Shared content is only served after the upstream confirmed
the client may have it (:mod:`docxy.cache.access`).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import Request

from ..names import upstream_name
from ..notes import record
from ..relay import Exchange, Relay
from ..routing import Target
from ..singleflight import SingleFlight, shared
from ..streaming import BodyPump, abort_client
from ..upstream_client import (
    UpstreamClient,
    UpstreamResponse,
    discard_body,
    discard_unclaimed,
)
from .access import AccessChecker
from .answers import CONDITIONAL, cached_headers, may_have
from .blob_store import BlobStore, Entry
from .counters import Counters
from .disk_health import DiskHealth
from .disk_pool import DiskPool
from .fill import Fill, FillState
from .fill_lock import FillClaim, RemoteFill
from .fill_reader import read_fill
from .hit import Hits
from .tee import TeeSender

log = Logger()


class BlobCache:
    """Serves blobs from disk, sharing each upstream transfer among its readers.

    One upstream GET per digest however many clients ask at once (they
    join the fill and read its file at their own pace), and shared bytes
    only for clients the upstream would have served itself.
    """

    def __init__(
        self,
        store: BlobStore,
        relay: Relay,
        client: UpstreamClient,
        access: AccessChecker,
        reactor: Any,
        idle_timeout: float,
        counters: Counters | None = None,
        health: DiskHealth | None = None,
        disk: DiskPool | None = None,
    ) -> None:
        self.store = store
        self.health = health or DiskHealth(store.root, reactor)
        self.relay = relay
        self.client = client
        self.access = access
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.counters = counters or Counters()
        self.fills: dict[str, Fill] = {}
        # Other worker processes use this cache too (docxy.cache.fill_lock).
        self.shared = False
        # The upstream GETs that open fills; a non-200 answer nobody takes
        # is read to its end so its connection is not left half-read.
        self._opening: SingleFlight[str, Fill | UpstreamResponse] = SingleFlight(
            discard_unclaimed, what="opening a blob fill"
        )
        self.disk = disk or DiskPool(reactor)
        self.hits = Hits(
            store,
            self.disk,
            reactor,
            idle_timeout,
            self._headers,
            self._damaged,
            self._sent,
        )

    async def serve(self, request: Request, exchange: Exchange, target: Target) -> None:
        digest = exchange.digest
        assert digest is not None
        upstream = target.mirror.upstream
        repo = upstream_name(target.route.name, upstream.library_prefix)
        who = self.access.who(request)
        shared = (
            digest in self.store.entries
            or digest in self.fills
            or digest in self._opening
            or self._elsewhere(digest)
        )
        if shared and not await may_have(
            self.access, self.counters, target, repo, digest, who, "blobs"
        ):
            # Not ours to give: the client gets the upstream's own answer.
            self.counters.denied += 1
            await self.relay.relay(request, exchange)
            return
        entry = self.store.get(digest)
        if request.method == b"HEAD":
            if entry is None:
                await self.relay.relay(request, exchange)
            else:
                self.counters.hits += 1
                self._headers(request, digest, 200, entry.size)
                request.finish()
            return
        if entry is not None:
            self.counters.hits += 1
            record(request, cache="hit")
            await self._serve_entry(request, exchange, entry)
            return
        if request.getHeader(b"range") is not None:
            # A ranged miss is a resumed download: pass it through as it is.
            self.counters.misses += 1
            await self.relay.relay(request, exchange)
            return
        fill = self.fills.get(digest)
        if fill is not None:
            self.counters.joined_fills += 1
            record(request, cache="joined")
        else:
            fill = await self._join_or_start(request, exchange, target, repo, shared)
            if fill is None:
                return
        await self._serve_fill(request, exchange, fill)

    async def _join_or_start(
        self,
        request: Request,
        exchange: Exchange,
        target: Target,
        repo: str,
        checked: bool = True,
    ) -> Fill | None:
        """Start the fill, or wait for the one being started.

        The upstream request runs on its own: a client that leaves while
        it waits for the upstream's headers does not cancel it, so the
        other clients (and the cache) still get the blob.
        """
        digest = exchange.digest
        assert digest is not None
        waiter, starter = self._opening.wait(
            digest, lambda: self._open(exchange, target, repo)
        )
        # A non-200 answer or a failure belongs to the starter; joiners only
        # learn there is no fill to share.
        outcome = await waiter if starter else await shared(waiter, Fill)
        if outcome is None:  # nothing to share: ask for ourselves
            await self.relay.relay(request, exchange)
            return None
        if isinstance(outcome, RemoteFill) and not checked:
            # Another worker started it just now: its upstream's yes was
            # for that worker's client, not this one.
            who = self.access.who(request)
            if not await may_have(
                self.access, self.counters, target, repo, digest, who, "blobs"
            ):
                self.counters.denied += 1
                await self.relay.relay(request, exchange)
                return None
        if isinstance(outcome, Fill):
            if starter:
                self.access.remember(
                    target.mirror.upstream.name,
                    repo,
                    digest,
                    self.access.who(request),
                )
                self.counters.misses += 1
                record(request, cache="miss", upstream_status=200)
            else:
                self.counters.joined_fills += 1
                record(request, cache="joined")
            return outcome
        # The upstream's own answer (401, 404, ...) to the starter's request,
        # or its 200 when the cache disk takes no writes.
        if outcome.response.code == 200:
            record(request, cache="uncached")
        await self.relay.answer(request, exchange, outcome)
        return None

    async def _open(
        self, exchange: Exchange, target: Target, repo: str
    ) -> Fill | UpstreamResponse:
        """The upstream GET of a fill; a non-200 answer is returned as is."""
        digest = exchange.digest
        assert digest is not None
        claim = self._claim(digest)
        if isinstance(claim, RemoteFill):
            await claim.ready
            return claim
        try:
            return await self._open_claimed(exchange, target, repo, claim)
        finally:
            fill = self.fills.get(digest)
            if claim is not None and (fill is None or fill.finished.called):
                claim.release()  # no fill of ours runs: the lock goes

    def _claim(self, digest: str) -> FillClaim | RemoteFill | None:
        """This worker's lock on the fill, or the other worker's fill to join
        (:mod:`docxy.cache.fill_lock`); None if tmp/ takes no file."""
        try:
            claim = FillClaim.take(self.store.temp_path(digest))
        except OSError:
            return None  # Fill cannot create its file either: uncached
        if isinstance(claim, int):
            # Given up on before our own readers' idle timeout would.
            remote = RemoteFill(
                self.store, digest, claim, self.reactor, stall=self.idle_timeout / 2
            )
            self.fills[digest] = remote
            remote.finished.addBoth(lambda _: self._filled(digest))
            return remote
        return claim

    def _elsewhere(self, digest: str) -> bool:
        """Does another worker of this cache have (or fill) ``digest``?"""
        return any(
            p.exists() for p in (self.store.path(digest), self.store.temp_path(digest))
        )

    async def _open_claimed(
        self, exchange: Exchange, target: Target, repo: str, claim: FillClaim | None
    ) -> Fill | UpstreamResponse:
        digest = exchange.digest
        assert digest is not None
        headers = exchange.headers.copy()
        for name in CONDITIONAL:
            headers.removeHeader(name)
        answer = await self.client.request(b"GET", exchange.url, headers)
        response = answer.response
        if response.code != 200:
            return answer
        length = None if response.length is UNKNOWN_LENGTH else int(response.length)
        if not self.health.writable(length or 0):
            return answer  # relayed as it is: uncached
        try:
            fill = Fill(
                self.store,
                digest,
                length,
                self.reactor,
                self.idle_timeout,
                self.counters,
                self.health,
                self.disk.hash_thread(),
                self.disk.threads(),
            )
        except OSError as e:
            self.health.failed(e)
            return answer
        self.fills[digest] = fill
        fill.finished.addBoth(lambda _: self._filled(digest))
        if claim is not None:
            if self.shared:  # other workers' readers need the length
                claim.announce(length)
            fill.finished.addBoth(lambda _: claim.release())
        response.deliverBody(fill)
        self.access.probe_public(target.mirror, repo, digest, "blobs")
        return fill

    def _filled(self, digest: str) -> None:
        self.fills.pop(digest, None)

    def _headers(
        self, request: Request, digest: str, code: int, length: int | None
    ) -> None:
        cached_headers(request, digest, code, b"application/octet-stream", length)
        request.responseHeaders.setRawHeaders(b"accept-ranges", [b"bytes"])

    async def _serve_fill(
        self, request: Request, exchange: Exchange, fill: Fill
    ) -> None:
        digest = fill.digest
        if fill.state is FillState.DONE and fill.entry is not None:
            entry = self.store.get(digest)
            if entry is not None:
                await self._serve_entry(request, exchange, entry)
                return
        if fill.state is FillState.FAILED:
            await self.relay.relay(request, exchange)
            return
        self._headers(request, digest, 200, fill.length)
        on_end = lambda outcome, sent: self._sent(request, outcome, sent)  # noqa: E731
        resume = lambda offset: self._resume(request, exchange, offset)  # noqa: E731
        # The fill's first client is fed from memory; the others read its file.
        tee = TeeSender(
            request,
            fill,
            self.reactor,
            self.disk.threads(),
            self.idle_timeout,
            on_end,
            resume,
        )
        if tee.start():
            return
        read_fill(
            request,
            fill,
            os.open(fill.temp, os.O_RDONLY | os.O_CLOEXEC),
            0,
            self.reactor,
            self.disk.threads(),
            self.idle_timeout,
            on_end,
            resume,
        )

    def _resume(self, request: Request, exchange: Exchange, offset: int) -> None:
        """The fill lost its disk: this client's remaining bytes come straight
        from upstream (a ranged GET), so its pull goes on uncached."""
        record(request, cache="uncached")
        d = defer.Deferred.fromCoroutine(self._rest(request, exchange, offset))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._resume_failed, request)

    async def _rest(self, request: Request, exchange: Exchange, offset: int) -> None:
        headers = exchange.headers.copy()
        for name in CONDITIONAL:
            headers.removeHeader(name)
        headers.setRawHeaders(b"range", [b"bytes=%d-" % offset])
        answer = await self.client.request(b"GET", exchange.url, headers)
        response = answer.response
        ranges = response.headers.getRawHeaders(b"content-range") or [b""]
        if response.code != 206 or not ranges[0].startswith(b"bytes %d-" % offset):
            await discard_body(response)
            log.warn("upstream cannot resume {url}", url=exchange.url)
            abort_client(request)  # a short read: the client retries
            return
        response.deliverBody(
            BodyPump(
                request,
                self.reactor,
                self.idle_timeout,
                on_end=lambda outcome: record(request, outcome=outcome),
            )
        )

    def _resume_failed(self, failure: Failure, request: Request) -> None:
        if not failure.check(defer.CancelledError):
            log.warn(
                "resuming from upstream failed: {why}", why=failure.getErrorMessage()
            )
            abort_client(request)

    async def _serve_entry(
        self, request: Request, exchange: Exchange, entry: Entry
    ) -> None:
        await self.hits.serve(
            request, entry, lambda: self.relay.relay(request, exchange)
        )

    def _damaged(self, digest: str) -> None:
        self.counters.digest_mismatches += 1
        self.store.discard(digest)
        log.error("cached {digest} is damaged on disk; discarded", digest=digest)

    def _sent(self, request: Request, outcome: str, sent: int) -> None:
        self.counters.bytes_served += sent
        record(request, outcome=outcome)
