"""May this client have this cached content? The upstream decides, as it would.

A client must never receive cached content it could not have pulled from
the upstream itself. So before a cached (or another client's in-flight)
blob or manifest is served, Docxy asks the upstream: a ``HEAD`` of that
blob or manifest in that repository, redirects not followed (Docker Hub
does not count HEADs against the pull limit).

- First as anyone: with an anonymous token Docxy fetches from the realm
  itself. A yes means the repository's content is public: it is served to
  every client for ``ttl`` seconds without asking again.
- Else with the client's own credentials. A yes is remembered for ``ttl``
  seconds per (upstream, repository, digest, credential); the credential is
  kept only as keyed hashes (:mod:`docxy.cache.evidence`).

When the upstream cannot be reached, or answers the check 429 or 5xx, an
expired yes is the best evidence there is: :meth:`AccessChecker.remembered`
lets stale serving use it, after a restart too (:mod:`docxy.cache.ledger`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ..oci import USER_AGENT, pull_scope
from ..ratelimit import is_unavailable, unavailable
from ..realm import NoTokenServiceError
from ..upstream_client import (
    UpstreamClient,
    UpstreamError,
    discard_body,
    read_small_body,
)
from .evidence import Evidence, Who
from .manifest_store import ALL_MANIFEST_TYPES

if TYPE_CHECKING:
    from ..routing import Mirror

log = Logger()

Repo = tuple[str, str]


class AccessChecker:
    """Asks the upstream, and keeps what it answered as :class:`Evidence`."""

    def __init__(self, client: UpstreamClient, evidence: Evidence) -> None:
        self.client = client
        self.evidence = evidence
        self._probing: set[Repo] = set()

    def who(self, request: Request) -> Who:
        return self.evidence.who(request)

    def remember(self, upstream: str, repo: str, digest: str, who: Who) -> None:
        """The upstream just gave this content to this client."""
        self.evidence.granted(upstream, repo, digest, who)

    def remembered(self, upstream: str, repo: str, digest: str, who: Who) -> bool:
        """Was this ever allowed (public, or this client), however long ago?"""
        return self.evidence.remembered(upstream, repo, digest, who)

    async def allowed(
        self,
        mirror: Mirror,
        repo: str,
        digest: str,
        who: Who,
        kind: str = "blobs",
    ) -> bool:
        upstream = mirror.upstream.name
        if self.evidence.fresh(upstream, repo, digest, who):
            return True
        path = mirror.content_url(repo, kind, digest)
        accept = ALL_MANIFEST_TYPES if kind == "manifests" else None
        unreachable: UpstreamError | None = None
        try:
            anyone = await self._head(path, await self._anonymous(mirror, repo), accept)
        except UpstreamError as e:
            anyone, unreachable = False, e  # the client's own credentials decide
        if anyone:
            self.evidence.public(upstream, repo)
            self.evidence.member(upstream, repo, digest)
            return True
        authorization = who.authorization
        if authorization and await self._head(path, authorization, accept):
            self.remember(upstream, repo, digest, who)
            return True
        if unreachable is not None:
            # Not a no: whether it is public is unknown; evidence decides.
            raise unreachable
        return False

    def probe_public(self, mirror: Mirror, repo: str, digest: str, kind: str) -> None:
        """In the background: is this repository public? (Evidence for outages.)

        Called after a client fetched something new, so that when the
        upstream later goes away, public content can still be served to
        every client, while private content stays with its credentials.
        Once per repository and ``ttl``.
        """
        key = (mirror.upstream.name, repo)
        if self.evidence.public_fresh(*key) or key in self._probing:
            return
        self._probing.add(key)

        async def probe() -> None:
            path = mirror.content_url(repo, kind, digest)
            accept = ALL_MANIFEST_TYPES if kind == "manifests" else None
            try:
                if await self._head(path, await self._anonymous(mirror, repo), accept):
                    self.evidence.public(*key)
                    log.info(
                        "{upstream} {repo} is public: its cached content may be "
                        "served to any client",
                        upstream=key[0],
                        repo=repo,
                    )
            finally:
                self._probing.discard(key)

        defer.ensureDeferred(probe()).addErrback(_probe_failed, key)

    async def _anonymous(self, mirror: Mirror, repo: str) -> bytes | None:
        """A token for pulling ``repo``, as an anonymous client would get.

        With Docxy's own upstream tokens (an account) that is the mirror's
        token: every anonymous client of the mirror pulls with it.
        """
        if mirror.tokens is not None:
            return await mirror.tokens.authorization(pull_scope(repo))
        try:
            realm = await mirror.realms.get()
        except NoTokenServiceError:
            return None
        query = [("scope", pull_scope(repo))]
        if realm.service:
            query.insert(0, ("service", realm.service))
        sep = "&" if "?" in realm.url else "?"
        answer = await self.client.request(
            b"GET",
            f"{realm.url}{sep}{urlencode(query)}",
            Headers({b"user-agent": [USER_AGENT]}),
        )
        if is_unavailable(answer.response.code):
            raise await unavailable(answer.response)
        body = await read_small_body(answer.response, 64 * 1024)
        if answer.response.code != 200:
            return None
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            return None
        return f"Bearer {token}".encode("ascii") if isinstance(token, str) else None

    async def _head(
        self, url: str, authorization: bytes | None, accept: bytes | None = None
    ) -> bool:
        headers = Headers({b"user-agent": [USER_AGENT]})
        if accept:
            headers.setRawHeaders(b"accept", [accept])
        if authorization:
            headers.setRawHeaders(b"authorization", [authorization])
        answer = await self.client.request(
            b"HEAD", url, headers, follow_redirects=False
        )
        code: int = answer.response.code
        if is_unavailable(code):
            # A 429 or 5xx is no answer to "may they": the upstream is away.
            raise await unavailable(answer.response)
        await discard_body(answer.response)
        return 200 <= code < 400


def _probe_failed(failure: Failure, key: Repo) -> None:
    # Nobody waits for a probe: its failure is logged, never raised.
    upstream, repo = key
    if failure.check(UpstreamError):
        log.info(
            "could not tell whether {upstream} {repo} is public: {why}",
            upstream=upstream,
            repo=repo,
            why=failure.getErrorMessage(),
        )
    else:
        log.failure(
            "public probe of {upstream} {repo} failed",
            failure,
            upstream=upstream,
            repo=repo,
        )
