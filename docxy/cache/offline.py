"""Answers while the upstream is unreachable, so cached images still pull.

dockerd and podman ping ``/v2/`` and fetch a token before any manifest; with
the upstream down (or answering 429) both would fail before the cache is
even asked. With a cache, Docxy answers the ping with the challenge it saw
last (kept in the ledger, so after a restart too), and a token request with
an *offline token*. That token grants nothing by itself: the cache still
serves only what was public, or allowed for the same credential, before
the upstream went away (see :mod:`docxy.cache.access`).

"The same credential" must survive a restart, yet bearer tokens change
with every token request. So Docxy notes who asked for each upstream token
(:class:`TokenBook`: a keyed hash of the client's credential, the
*principal*, never the credential), and an offline token asked for with a
credential names its principal, until it expires, with a MAC only Docxy
can make: ``docxy-offline.<principal>.<expires>.<mac>``.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.web.server import Request

from ..challenge import Challenge
from ..errors import API_VERSION, API_VERSION_HEADER, RegistryError
from ..notes import record
from ..own_tokens import OFFLINE_TOKEN, write_token
from ..realm import TokenRealm
from .ledger import Ledger

if TYPE_CHECKING:
    from ..routing import Mirror

# How long a token Docxy saw issued is taken to name its principal, at least.
MIN_TOKEN_LIFETIME = 60.0
# How long an offline token names its principal. Clients are told 60 s and
# ask again with their credentials; some reuse a token for a whole pull.
OFFLINE_TOKEN_LIFETIME = 3600
_OFFLINE_PREFIX = OFFLINE_TOKEN + "."


class TokenBook:
    """Who asked for which upstream token, and offline tokens that say who."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.keys = ledger.keys

    def principal(
        self, authorization: bytes | None, params: list[tuple[str, str]]
    ) -> str | None:
        """The keyed hash of a token request's credential; None if anonymous."""
        if authorization and not authorization.lower().startswith(b"bearer "):
            return self.keys.of("principal", _basic_identity(authorization))
        form = dict(params)
        if form.get("grant_type") == "password" and form.get("username"):
            credential = f"{form['username']}:{form.get('password', '')}".encode()
            return self.keys.of("principal", credential)
        if form.get("grant_type") == "refresh_token" and form.get("refresh_token"):
            token = form["refresh_token"].encode()
            return self.keys.of("principal", b"refresh:" + token)
        return None

    def issued(self, token: str, principal: str, expires_in: float) -> None:
        """The upstream gave ``token`` to ``principal``."""
        now = self.ledger.clock.seconds()
        expires = now + max(expires_in, MIN_TOKEN_LIFETIME)
        key = self.keys.of("token", token.encode())
        self.ledger.tokens.put((key,), (principal, repr(expires)), now)

    def offline_token(self, principal: str | None) -> str:
        if principal is None:
            return OFFLINE_TOKEN
        expires = int(self.ledger.clock.seconds()) + OFFLINE_TOKEN_LIFETIME
        claim = f"{principal}.{expires}"
        mac = self.keys.of("offline", claim.encode())
        return f"{_OFFLINE_PREFIX}{claim}.{mac}"

    def principal_of(
        self, authorization: bytes | None, own_token: bytes | None
    ) -> str | None:
        """Whose request this is, from an upstream token or an offline token."""
        if own_token is not None:
            return self._offline_principal(own_token)
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        row = self.ledger.tokens.get((self.keys.of("token", token.strip()),))
        if row is None or float(row[0][1]) < self.ledger.clock.seconds():
            return None
        return str(row[0][0])

    def _offline_principal(self, authorization: bytes) -> str | None:
        token = authorization.strip().partition(b" ")[2].strip().decode("latin-1")
        if not token.startswith(_OFFLINE_PREFIX):
            return None
        claim, _, mac = token[len(_OFFLINE_PREFIX) :].rpartition(".")
        expected = self.keys.of("offline", claim.encode("latin-1"))
        # As bytes: compare_digest raises on non-ASCII text.
        if not hmac.compare_digest(mac.encode("latin-1"), expected.encode()):
            return None
        principal, _, expires = claim.partition(".")
        if not expires.isdigit() or int(expires) < self.ledger.clock.seconds():
            return None
        return principal


def _basic_identity(authorization: bytes) -> bytes:
    """``user:password`` of a Basic credential (so case and padding do not matter)."""
    scheme, _, value = authorization.strip().partition(b" ")
    if scheme.lower() == b"basic":
        try:
            return base64.b64decode(value.strip(), validate=True)
        except ValueError:
            pass
    return authorization.strip()


def keep_challenges(ledger: Ledger, mirrors: Mapping[str, Mirror]) -> None:
    """Restore each upstream's last challenge and keep the next ones seen."""
    for name, mirror in mirrors.items():
        key = (name, mirror.upstream.url)
        row = ledger.challenges.get(key)
        if row is not None:
            realm, service = (str(v) for v in row[0])
            mirror.realms.restore(TokenRealm(realm, service or None))

        def seen(realm: TokenRealm, key: tuple[str, str] = key) -> None:
            ledger.challenges.put(
                key, (realm.url, realm.service or ""), ledger.clock.seconds()
            )

        mirror.realms.on_change = seen


def answer_ping(request: Request, mirror: Mirror) -> bool:
    """The last known challenge; False if Docxy never saw one."""
    realm = mirror.realms.known
    if realm is None:
        return False
    challenge = Challenge("Bearer", [("realm", mirror.ping_realm)])
    if realm.service:
        challenge.params.append(("service", realm.service))
    body = RegistryError(401, "UNAUTHORIZED", "authentication required").body()
    request.setResponseCode(401)
    request.setHeader(API_VERSION_HEADER, API_VERSION)
    request.setHeader(b"www-authenticate", challenge.render().encode("latin-1"))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    record(request, cache="offline")
    request.write(body)
    request.finish()
    return True


def answer_token(request: Request, token: str = OFFLINE_TOKEN) -> None:
    record(request, cache="offline")
    write_token(request, token, 60)
