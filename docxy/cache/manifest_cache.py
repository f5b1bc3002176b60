"""The manifest cache's request path: fresh tags, revalidation, stale-if-error.

- By digest: immutable; served once stored (after the access check),
  from memory if recently used, else read in the disk threads; fetched
  once otherwise, with one upstream GET however many clients miss it at
  the same moment (each still gets the access check a hit makes).
- By tag: within the freshness window the stored digest is served with no
  upstream request (when the repository is known public, or this client was
  allowed recently). After it, a ``HEAD`` revalidates the tag (Docker Hub
  does not count it as a pull) and the manifest is only fetched when the
  digest is new.
- If the upstream is down, times out, answers 5xx or 429, the last known
  manifest is served (stale-if-error) to clients that were allowed before,
  and that is logged and counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import Request

from ..errors import RegistryError
from ..names import upstream_name
from ..notes import record
from ..oci import MAX_MANIFEST, Digest, is_valid_digest
from ..ratelimit import rate_limited
from ..relay import Exchange, Relay
from ..routing import Target
from ..singleflight import SingleFlight, shared
from ..upstream_client import (
    BodyTooLargeError,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    discard_body,
    discard_unclaimed,
    read_small_body,
)
from .access import AccessChecker
from .answers import CONDITIONAL, cached_headers, may_have
from .counters import Counters
from .disk_health import DiskHealth
from .evidence import Who
from .manifest_claim import ManifestClaims
from .manifest_store import ManifestStore, TagIndex, TagKey, accept_key

log = Logger()


class _StaleError(Exception):
    """The upstream cannot answer now; the last known manifest may do."""


@dataclass(frozen=True)
class Landed:
    """A manifest the upstream gave, verified; ``stored`` if the disk took it."""

    digest: str
    body: bytes
    content_type: bytes
    stored: bool
    # Another worker's GET stored it: this one's client was not checked.
    elsewhere: bool = False


Content = tuple[str, str, str]  # upstream, repository, digest


class ManifestCache:
    """Serves manifests from disk where the evidence allows, else pulls them through.

    Tags are revalidated with a ``HEAD`` (free at Docker Hub) and served
    stale when the upstream fails, so a warm pull costs no manifest GET.
    """

    def __init__(
        self,
        store: ManifestStore,
        tags: TagIndex,
        relay: Relay,
        client: UpstreamClient,
        access: AccessChecker,
        clock: Any,
        freshness: float,
        counters: Counters,
        health: DiskHealth | None = None,
        claims: ManifestClaims | None = None,
    ) -> None:
        """``claims``: other workers share the cache (and its GETs)."""
        self.store = store
        self.claims = claims
        self.tags = tags
        self.health = health or DiskHealth(store.root.parent, clock)
        self.relay = relay
        self.client = client
        self.access = access
        self.clock = clock
        self.freshness = freshness
        self.counters = counters
        # Concurrent misses of one manifest make one upstream GET; an answer
        # whose client left is read to its end.
        self._fetching: SingleFlight[Content, Landed | UpstreamResponse] = SingleFlight(
            discard_unclaimed, what="fetching a manifest"
        )

    async def serve(self, request: Request, exchange: Exchange, target: Target) -> None:
        upstream = target.mirror.upstream
        repo = upstream_name(target.route.name, upstream.library_prefix)
        reference = target.route.reference
        who = self.access.who(request)
        if ":" in reference:
            stored = await self.store.get(reference)
            if stored is None:
                await self._fetch(request, exchange, target, repo, reference, None)
            elif await self._may(target, repo, reference, who):
                self._send(request, reference, *stored, "hit")
            else:
                self.counters.denied += 1
                await self.relay.relay(request, exchange)
            return
        accept = accept_key(list(request.requestHeaders.getRawHeaders(b"accept", [])))
        key = self.tags.tag_key(upstream.name, repo, reference, accept)
        entry = self.tags.tag(key)
        now = self.clock.seconds()
        if entry is not None and now - entry.checked < self.freshness:
            stored = await self.store.get(entry.digest)
            if stored is not None and await self._may(target, repo, entry.digest, who):
                self._send(request, entry.digest, *stored, "hit")
                return
        try:
            await self._revalidate(request, exchange, target, repo, key)
        except _StaleError as why:
            if entry is None:
                # Another client's Accept set (say, prefetch's) may have seen
                # this tag: its manifest will do if this client accepts it.
                entry = self.tags.fallback_tag(upstream.name, repo, reference, accept)
            stored = None if entry is None else await self.store.get(entry.digest)
            if (
                entry is None
                or stored is None
                or not self.access.remembered(upstream.name, repo, entry.digest, who)
            ):
                if isinstance(why.__cause__, UpstreamError):
                    raise why.__cause__ from None
                await self.relay.relay(request, exchange)
                return
            self.counters.stale_serves += 1
            log.warn(
                "upstream {upstream} unavailable ({why}); serving last known "
                "{repo}:{tag} = {digest}",
                upstream=upstream.name,
                why=str(why),
                repo=repo,
                tag=reference,
                digest=entry.digest,
            )
            self._send(request, entry.digest, *stored, "stale")

    async def _may(self, target: Target, repo: str, digest: str, who: Who) -> bool:
        return await may_have(
            self.access, self.counters, target, repo, digest, who, "manifests"
        )

    async def _revalidate(
        self,
        request: Request,
        exchange: Exchange,
        target: Target,
        repo: str,
        key: TagKey,
    ) -> None:
        headers = exchange.headers.copy()
        for name in CONDITIONAL:
            headers.removeHeader(name)
        try:
            answer = await self.client.request(b"HEAD", exchange.url, headers)
        except UpstreamError as e:
            raise _StaleError(str(e)) from e
        response = answer.response
        if response.code == 429:
            # Told to the client as it is if nothing cached can answer.
            raise _StaleError("upstream answered 429") from await rate_limited(response)
        if response.code >= 500:
            await discard_body(response)
            raise _StaleError(f"upstream answered {response.code}")
        digest = (response.headers.getRawHeaders(b"docker-content-digest") or [b""])[0]
        digest_text = digest.decode("latin-1")
        if response.code != 200 or not is_valid_digest(digest_text):
            # The upstream's own answer (401, 404, ...): for a HEAD, this one.
            if request.method == b"HEAD":
                await self.relay.answer(request, exchange, answer)
            else:
                await discard_body(response)
                await self.relay.relay(request, exchange)
            return
        await discard_body(response)
        who = self.access.who(request)
        self.access.remember(target.mirror.upstream.name, repo, digest_text, who)
        stored = await self.store.get(digest_text)
        if stored is not None:
            media = stored[1].decode("latin-1")
            self.tags.set_tag(key, digest_text, media, self.clock.seconds())
            self._send(request, digest_text, *stored, "revalidated")
            return
        await self._fetch(request, exchange, target, repo, digest_text, key)

    async def _fetch(
        self,
        request: Request,
        exchange: Exchange,
        target: Target,
        repo: str,
        digest: str,
        key: TagKey | None,
    ) -> None:
        """GET the manifest by digest, check it, store it, then answer.

        Clients that miss the same content at the same moment share one
        upstream GET (Docker Hub counts each as a pull): the first one's,
        which runs on even if its client leaves. The others wait for it to
        land, then are answered as a hit would answer them, after the same
        access check; if it did not land (an error, or the upstream's
        answer to the first client's credentials), each fetches its own.
        Across workers the same holds (:mod:`docxy.cache.manifest_claim`):
        a worker whose GET waited for another's answers as a joiner.
        """
        upstream = target.mirror.upstream.name
        who = self.access.who(request)
        url = target.mirror.content_url(repo, "manifests", digest)
        headers = exchange.headers.copy()
        for name in CONDITIONAL:
            headers.removeHeader(name)
        get = partial(self._get, target, repo, digest, url, headers, who, key)
        waiter, first = self._fetching.wait(
            (upstream, repo, digest), lambda: self._get_once(digest, get)
        )
        if first:
            outcome = await waiter
            if isinstance(outcome, Landed) and outcome.elsewhere:
                await self._joined(request, exchange, target, repo, key, outcome)
                return
        else:
            self.counters.joined_fills += 1
            landed = await shared(waiter, Landed)
            if landed is not None:
                await self._joined(request, exchange, target, repo, key, landed)
                return
            outcome = await get()
        if isinstance(outcome, UpstreamResponse):
            await self.relay.answer(request, exchange, outcome)
            return
        record(request, upstream_status=200)
        self._send(request, digest, outcome.body, outcome.content_type, "miss")

    async def _get_once(
        self, digest: str, get: Callable[[], Awaitable[Landed | UpstreamResponse]]
    ) -> Landed | UpstreamResponse:
        """``get()`` (:meth:`_get`), unless another worker's GET of ``digest``
        lands meanwhile."""
        if self.claims is None:
            return await get()
        return await self.claims.get_once(
            digest, get, lambda: self._landed_elsewhere(digest), self._joined_elsewhere
        )

    async def _landed_elsewhere(self, digest: str) -> Landed | None:
        stored = await self.store.get(digest)
        if stored is None:
            return None
        return Landed(digest, *stored, stored=True, elsewhere=True)

    def _joined_elsewhere(self) -> None:
        self.counters.joined_fills += 1

    async def _get(
        self,
        target: Target,
        repo: str,
        digest: str,
        url: str,
        headers: Headers,
        who: Who,
        key: TagKey | None,
    ) -> Landed | UpstreamResponse:
        """The upstream GET for ``who``: verified and stored, or the upstream's
        own answer (not 200, or too big to cache) to relay as it is."""
        answer = await self.client.request(b"GET", url, headers)
        response = answer.response
        too_big = (
            response.length is not UNKNOWN_LENGTH and response.length > MAX_MANIFEST
        )
        if response.code != 200 or too_big:
            return answer
        try:
            body = await read_small_body(response, MAX_MANIFEST)
        except BodyTooLargeError:
            raise RegistryError(
                502, "MANIFEST_INVALID", "upstream manifest over 4 MiB", None
            ) from None
        if not Digest.parse(digest).matches(body):
            self.counters.digest_mismatches += 1
            log.error("upstream manifest does not match {digest}", digest=digest)
            raise RegistryError(
                502, "MANIFEST_INVALID", "upstream manifest does not match its digest"
            )
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        stored = await self._store(digest, body, content_type)
        if stored and key is not None:
            media = content_type.decode("latin-1")
            self.tags.set_tag(key, digest, media, self.clock.seconds())
        self.access.remember(target.mirror.upstream.name, repo, digest, who)
        self.access.probe_public(target.mirror, repo, digest, "manifests")
        return Landed(digest, body, content_type, stored)

    async def _joined(
        self,
        request: Request,
        exchange: Exchange,
        target: Target,
        repo: str,
        key: TagKey | None,
        landed: Landed,
    ) -> None:
        """Another client's GET landed: answer this one as a hit would."""
        digest = landed.digest
        if not await self._may(target, repo, digest, self.access.who(request)):
            self.counters.denied += 1
            await self.relay.relay(request, exchange)
            return
        if landed.stored and key is not None:
            media = landed.content_type.decode("latin-1")
            self.tags.set_tag(key, digest, media, self.clock.seconds())
        self._send(request, digest, landed.body, landed.content_type, "joined")

    async def _store(self, digest: str, body: bytes, content_type: bytes) -> bool:
        """Store a verified manifest; a disk in trouble only means not stored."""
        if not self.health.writable(len(body)):
            return False
        try:
            await self.store.put(digest, body, content_type)
        except OSError as e:
            self.health.failed(e)
            return False
        return True

    def _send(
        self,
        request: Request,
        digest: str,
        body: bytes,
        content_type: bytes,
        outcome: str,
    ) -> None:
        if outcome == "miss":
            self.counters.misses += 1
        elif outcome != "joined":  # counted as it joined
            self.counters.hits += 1
        record(request, cache=outcome)
        cached_headers(request, digest, 200, content_type, len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
