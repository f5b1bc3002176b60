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
  kept only as a SHA-256 of its ``Authorization`` header.

When the upstream cannot be reached, an expired yes is the best evidence
there is: :meth:`AccessChecker.remembered` lets stale serving use it.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ..oci import USER_AGENT
from ..ratelimit import is_unavailable, unavailable
from ..realm import NoTokenServiceError
from ..upstream_client import (
    UpstreamClient,
    UpstreamError,
    discard_body,
    read_small_body,
)
from .manifest_store import ALL_MANIFEST_TYPES

if TYPE_CHECKING:
    from ..routing import Mirror

log = Logger()

MAX_REMEMBERED = 100_000

Key = tuple[str, str, str, str]
Repo = tuple[str, str]


def credential_id(authorization: bytes | None) -> str:
    if not authorization:
        return "-"
    return hashlib.sha256(authorization).hexdigest()


class AccessChecker:
    """Three kinds of evidence, each from the upstream itself:

    - a repository is public (an anonymous client may pull from it);
    - a digest belongs to a repository (the upstream served it under it);
    - a credential may have a digest of a repository.

    Public repository + member digest = anyone may have it. Entries expire
    after ``ttl`` for serving, but stay (bounded) as evidence for outages.
    """

    def __init__(self, client: UpstreamClient, clock: IReactorTime, ttl: float) -> None:
        self.client = client
        self.clock = clock
        self.ttl = ttl
        self._yes: OrderedDict[Key, float] = OrderedDict()
        self._public: OrderedDict[Repo, float] = OrderedDict()
        self._members: OrderedDict[Key, None] = OrderedDict()
        self._probing: set[Repo] = set()

    def remember(
        self, upstream: str, repo: str, digest: str, authorization: bytes | None
    ) -> None:
        """The upstream just gave this content to this credential."""
        _put(
            self._yes,
            (upstream, repo, digest, credential_id(authorization)),
            self._expiry(),
        )
        _put(self._members, (upstream, repo, digest, ""), None)

    def _expiry(self) -> float:
        return self.clock.seconds() + self.ttl

    def _fresh(self, table: OrderedDict[Any, float], key: Any) -> bool:
        expiry = table.get(key)
        return expiry is not None and expiry >= self.clock.seconds()

    def _public_member(
        self, upstream: str, repo: str, digest: str, fresh: bool
    ) -> bool:
        if (upstream, repo, digest, "") not in self._members:
            return False
        if fresh:
            return self._fresh(self._public, (upstream, repo))
        return (upstream, repo) in self._public

    def remembered(
        self, upstream: str, repo: str, digest: str, authorization: bytes | None
    ) -> bool:
        """Was this ever allowed (public, or this credential), however long ago?"""
        own = (upstream, repo, digest, credential_id(authorization))
        return own in self._yes or self._public_member(upstream, repo, digest, False)

    async def allowed(
        self,
        mirror: Mirror,
        repo: str,
        digest: str,
        authorization: bytes | None,
        kind: str = "blobs",
    ) -> bool:
        upstream = mirror.upstream.name
        own = (upstream, repo, digest, credential_id(authorization))
        if self._fresh(self._yes, own) or self._public_member(
            upstream, repo, digest, True
        ):
            return True
        path = mirror.content_url(repo, kind, digest)
        accept = ALL_MANIFEST_TYPES if kind == "manifests" else None
        unreachable: UpstreamError | None = None
        try:
            anyone = await self._head(path, await self._anonymous(mirror, repo), accept)
        except UpstreamError as e:
            anyone, unreachable = False, e  # the client's own credentials decide
        if anyone:
            _put(self._public, (upstream, repo), self._expiry())
            _put(self._members, (upstream, repo, digest, ""), None)
            return True
        if authorization and await self._head(path, authorization, accept):
            self.remember(upstream, repo, digest, authorization)
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
        if self._fresh(self._public, key) or key in self._probing:
            return
        self._probing.add(key)

        async def probe() -> None:
            path = mirror.content_url(repo, kind, digest)
            accept = ALL_MANIFEST_TYPES if kind == "manifests" else None
            try:
                if await self._head(path, await self._anonymous(mirror, repo), accept):
                    _put(self._public, key, self._expiry())
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
            return await mirror.tokens.authorization(f"repository:{repo}:pull")
        try:
            realm = await mirror.realms.get()
        except NoTokenServiceError:
            return None
        query = [("scope", f"repository:{repo}:pull")]
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


_V = TypeVar("_V")


def _put(table: OrderedDict[Any, _V], key: Any, value: _V) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_REMEMBERED:
        table.popitem(last=False)
