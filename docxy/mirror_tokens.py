"""Upstream tokens Docxy fetches for itself and keeps server-side.

With an account configured for an upstream, anonymous clients, cache fills
and access probes pull with the account; with Docxy's own accounts on
(:mod:`docxy.access_control`), every client's request does, the account
or anonymously. Either way the upstream token is Docxy's: it is attached
to the upstream request here and never reaches a client.

Tokens are cached per scope until shortly before their ``expires_in`` and
shared by every client, so a warm pull costs no token round trip; one
fetch per scope runs at a time (:class:`~docxy.singleflight.SingleFlight`).
The account is only sent to a realm :func:`~docxy.credentials.realm_refusal`
accepts, never across a redirect; another realm gets an anonymous request
and one error line.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from urllib.parse import urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from .credentials import realm_hosts, realm_refusal
from .oci import USER_AGENT
from .ratelimit import is_unavailable, unavailable
from .realm import NoTokenServiceError, RealmDirectory
from .singleflight import SingleFlight
from .upstream_client import UpstreamClient, UpstreamError, read_small_body
from .upstream_set import Upstream

log = Logger()

MAX_SCOPES = 10_000
MAX_TOKEN_BODY = 64 * 1024
# The token service's default when it names no expires_in (distribution spec).
DEFAULT_EXPIRES_IN = 60
# A cached token is dropped this long (at most) before it expires.
EXPIRY_MARGIN = 30.0


class MirrorTokens:
    """One upstream's tokens for Docxy's own use, by scope."""

    def __init__(
        self,
        client: UpstreamClient,
        clock: IReactorTime,
        upstream: Upstream,
        realms: RealmDirectory,
    ) -> None:
        self.client = client
        self.clock = clock
        self.upstream = upstream
        self.realms = realms
        self.account = upstream.credentials
        self._allowed = realm_hosts(upstream.url, upstream.realm, upstream.realm_hosts)
        self._tokens: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._flights: SingleFlight[str, bytes | None] = SingleFlight(
            what="upstream token request"
        )
        self._refused: set[str] = set()

    @property
    def account_name(self) -> str:
        return self.account.username if self.account is not None else "anonymous"

    async def authorization(self, scope: str) -> bytes | None:
        """``Bearer <token>`` for ``scope``; None for an upstream without tokens."""
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > self.clock.seconds():
            self._tokens.move_to_end(scope)
            return cached[0]
        waiter, _ = self._flights.wait(scope, lambda: self._fetch(scope))
        return await waiter

    def forget(self, scope: str) -> None:
        """Drop the cached token of ``scope`` (the upstream no longer takes it)."""
        self._tokens.pop(scope, None)

    async def _fetch(self, scope: str) -> bytes | None:
        try:
            realm = await self.realms.get()
        except NoTokenServiceError:
            return None
        query = [("scope", scope)] if scope else []
        if realm.service:
            query.insert(0, ("service", realm.service))
        headers = Headers({b"user-agent": [USER_AGENT]})
        if self.account is not None and self._may_receive(realm.url):
            basic = self.account.basic()
            headers.setRawHeaders(b"authorization", [basic])
            who = self.account.username
            if self.client.budget is not None:
                self.client.budget.learn(basic, who)
        else:
            who = "anonymous"
        sep = "&" if "?" in realm.url else "?"
        url = f"{realm.url}{sep}{urlencode(query)}" if query else realm.url
        # Never across a redirect: its target is not the realm that was checked.
        answer = await self.client.request(b"GET", url, headers, follow_redirects=False)
        response = answer.response
        if is_unavailable(response.code):
            raise await unavailable(response)
        body = await read_small_body(response, MAX_TOKEN_BODY)
        if response.code != 200:
            if who != "anonymous":
                log.error(
                    "the token service of {upstream} refused the account {user} "
                    "(status {status}): check its password or token file",
                    upstream=self.upstream.name,
                    user=who,
                    status=response.code,
                )
            raise UpstreamError(f"upstream token service answered {response.code}")
        token, expires_in = _parse(body)
        value = b"Bearer " + token.encode("ascii")
        lifetime = max(expires_in - min(EXPIRY_MARGIN, expires_in / 5), 1.0)
        self._tokens[scope] = (value, self.clock.seconds() + lifetime)
        self._tokens.move_to_end(scope)
        while len(self._tokens) > MAX_SCOPES:
            self._tokens.popitem(last=False)
        if self.client.budget is not None:
            self.client.budget.learn(value, who)
        return value

    def _may_receive(self, realm: str) -> bool:
        reason = realm_refusal(self.upstream.url, self._allowed, realm)
        if reason is None:
            return True
        if realm not in self._refused:
            self._refused.add(realm)
            log.error(
                "not sending the account of {upstream} to the token realm "
                "{realm}: {reason}; asking it anonymously (add its host to "
                "realm-hosts if it is the upstream's own)",
                upstream=self.upstream.name,
                realm=realm,
                reason=reason,
            )
        return False


def _parse(body: bytes) -> tuple[str, float]:
    try:
        document = json.loads(body)
        token = document.get("token") or document.get("access_token")
        expires_in = document.get("expires_in", DEFAULT_EXPIRES_IN)
    except (ValueError, AttributeError):
        raise UpstreamError("upstream token service answered nonsense") from None
    if not isinstance(token, str) or not token.isascii() or not token.isprintable():
        raise UpstreamError("upstream token service answered no token")
    if not isinstance(expires_in, (int, float)) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return token, float(expires_in)
