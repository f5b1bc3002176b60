"""Where the upstream issues tokens, learnt from its own challenge.

Docker Hub's realm (auth.docker.io) is not derivable from its registry URL,
so Docxy asks ``GET /v2/`` once and remembers the realm and service it
names; every challenge that passes through later refreshes the memory.
Configuration can pin both instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from .challenge import Challenge, find_bearer
from .oci import USER_AGENT
from .ratelimit import is_unavailable, unavailable
from .singleflight import SingleFlight
from .upstream_client import UpstreamClient, UpstreamError, discard_body, same_origin

log = Logger()


@dataclass(frozen=True)
class TokenRealm:
    """Where an upstream issues tokens (``realm``) and for which ``service``."""

    url: str
    service: str | None


# An upstream found open is asked again after this long, not on every token
# request and access check (a plain registry may gain auth, rarely).
OPEN_TTL = 300.0


class NoTokenServiceError(Exception):
    """The upstream does not use bearer tokens (its ``/v2/`` is open)."""


class RealmDirectory:
    """The upstream's token realm: configured, or discovered and cached."""

    def __init__(
        self,
        client: UpstreamClient,
        upstream: str,
        realm: str | None = None,
        service: str | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._pinned = realm is not None
        self._current = TokenRealm(realm, service) if realm is not None else None
        if realm is not None and client.metrics is not None:
            client.metrics.name_like(realm, upstream)
        self._service_override = service
        # When a discovery last found /v2/ open (no token service).
        self._open_at: float | None = None
        self._discovery: SingleFlight[None, TokenRealm] = SingleFlight(
            what="token realm discovery"
        )
        # Called with each newly seen realm (the cache keeps it for restarts).
        self.on_change: Callable[[TokenRealm], None] | None = None

    def observe(self, challenge: Challenge) -> None:
        """Remember the realm of a challenge the upstream just sent."""
        if self._pinned:
            return
        realm = challenge.get("realm")
        if realm and self._acceptable(realm):
            self._open_at = None
            if self.client.metrics is not None:
                # Its answers (and pull budget) count as the upstream's.
                self.client.metrics.name_like(realm, self.upstream)
            seen = TokenRealm(realm, self._service_override or challenge.get("service"))
            if seen != self._current:
                self._current = seen
                if self.on_change is not None:
                    self.on_change(seen)

    def restore(self, realm: TokenRealm) -> None:
        """The realm seen before a restart, until the upstream names another."""
        if self._current is None and self._acceptable(realm.url):
            self._current = realm
            if self.client.metrics is not None:
                self.client.metrics.name_like(realm.url, self.upstream)

    @property
    def known(self) -> TokenRealm | None:
        """The realm as last seen, without asking the upstream."""
        return self._current

    async def get(self) -> TokenRealm:
        if self._current is not None:
            return self._current
        opened = self._open_at
        if opened is not None and self.client.reactor.seconds() - opened < OPEN_TTL:
            raise NoTokenServiceError()
        # One discovery at a time; concurrent callers wait for its result.
        waiter, _ = self._discovery.wait(None, self._discover)
        return await waiter

    async def _discover(self) -> TokenRealm:
        answer = await self.client.request(
            b"GET", f"{self.upstream}/v2/", Headers({b"user-agent": [USER_AGENT]})
        )
        response = answer.response
        if is_unavailable(response.code):
            # A 429 or 503 names no realm: that says nothing about tokens.
            raise await unavailable(response)
        await discard_body(response)
        values = [
            v.decode("latin-1")
            for v in response.headers.getRawHeaders(b"www-authenticate", [])
        ]
        challenge = find_bearer(values)
        if challenge is not None and not same_origin(answer.url, self.upstream):
            # A redirect target's realm would get the clients' credentials.
            raise UpstreamError("the upstream's /v2/ redirected to another host")
        if challenge is None:
            self._open_at = self.client.reactor.seconds()
            raise NoTokenServiceError()
        self.observe(challenge)
        if self._current is None:
            raise UpstreamError("upstream named an unacceptable token realm")
        return self._current

    def _acceptable(self, realm: str) -> bool:
        """A realm must be http(s), and never plain http behind an https upstream."""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            log.warn("ignoring token realm with unsupported URL")
            return False
        if urlsplit(self.upstream).scheme == "https" and parts.scheme != "https":
            log.warn("ignoring plain-http token realm of an https upstream")
            return False
        return True
