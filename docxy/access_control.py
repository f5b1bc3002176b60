"""Who may use the mirror: networks, accounts, and a rate per client.

A mirror on a public address with no access control is an open relay:
anyone can spend its bandwidth and its upstream pull budget (and its
upstream account's private repositories). Three independent checks:

- ``allow``: only clients from these networks (the connection's peer, or
  the ``X-Forwarded-For`` address a ``trusted-proxies`` proxy names:
  :mod:`docxy.client_address`) get past the door; the others get ``403
  DENIED``.
- accounts (``htpasswd``): clients log in at Docxy's token realm and get
  Docxy's own tokens (:mod:`docxy.client_tokens`), bound to the
  repositories granted; every registry request needs one that covers it
  (``anonymous = true`` lets requests without any token through too). The
  client's ``Authorization`` never goes upstream: Docxy pulls with its own
  upstream tokens (:mod:`docxy.mirror_tokens`).
- ``client-rate``: a token bucket per account, else per address.

:meth:`AccessGate.admit` runs at the root of the Resource tree for every
registry and token path; :meth:`AccessGate.authorize` runs once a
registry request is routed; :meth:`AccessGate.issue` is the token realm.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.web.server import Request

from .client_address import Address, client_address, parse_address, within
from .client_rate import ClientRate
from .client_tokens import Grant, TokenSigner, is_client_token
from .config_values import Network
from .errors import RegistryError
from .names import Kind
from .notes import record
from .oci import Scope, map_scopes, pull_scope
from .own_tokens import write_token

if TYPE_CHECKING:
    from .htpasswd import Accounts
    from .routing import Mirror, Target

SERVICE = "docxy"
BASIC_CHALLENGE = 'Basic realm="docxy"'
# The subject of Docxy's tokens for clients without an account (anonymous
# = true): many clients, so rated by address like requests without a token.
ANONYMOUS = "anonymous"


def denied(address: str) -> RegistryError:
    return RegistryError(
        403,
        "DENIED",
        "this mirror does not serve clients from your address",
        {"address": address},
    )


def unauthorized(message: str, challenge: str) -> RegistryError:
    return RegistryError(
        401,
        "UNAUTHORIZED",
        message,
        None,
        headers=((b"WWW-Authenticate", challenge.encode("latin-1")),),
    )


class AccessGate:
    """The mirror's door: every registry and token request passes it."""

    def __init__(
        self,
        allow: Sequence[Network] = (),
        trusted_proxies: Sequence[Network] = (),
        accounts: Accounts | None = None,
        signer: TokenSigner | None = None,
        anonymous: bool = False,
        rate: ClientRate | None = None,
    ) -> None:
        self.allow = tuple(allow)
        self.trusted_proxies = tuple(trusted_proxies)
        self.accounts = accounts
        self.signer = signer
        self.anonymous = anonymous
        self.rate = rate

    @property
    def accounts_on(self) -> bool:
        return self.accounts is not None and self.signer is not None

    # --- at the door ------------------------------------------------------

    def admit(self, request: Request, registry: bool) -> RegistryError | None:
        """Network, token and rate checks; the error to answer, or None."""
        try:
            address = self.client_address(request)
        except RegistryError as error:
            record(request, forwarded_for="unreadable")
            return error
        if address is not None and address != _peer(request):
            record(request, forwarded_for=str(address))  # for the access log
        if self.allow and not within(address, self.allow):
            return denied(str(address) if address is not None else "unknown")
        headers = request.requestHeaders
        values = headers.getRawHeaders(b"authorization", [])
        grant: Grant | None = None
        ours = [value for value in values if is_client_token(value)]
        presented = bool(ours)
        if presented and self.signer is not None:
            token = ours[0].strip().partition(b" ")[2].strip()
            grant = self.signer.verify(token.decode("latin-1"))
        if presented or (registry and self.accounts_on):
            # Docxy's tokens, and with accounts on whatever a client sends
            # to a registry path, are Docxy's business: never upstream.
            headers.removeHeader(b"authorization")
        request.notes["grant"] = grant  # type: ignore[attr-defined]
        request.notes["token_presented"] = presented  # type: ignore[attr-defined]
        if grant is not None:
            record(request, account=grant.subject)
        if self.rate is not None:
            if grant is not None and grant.subject != ANONYMOUS:
                key = f"account {grant.subject}"
            else:  # anonymous token holders are many clients: by address
                key = f"address {_rate_key(address)}"
            return self.rate.take(key)
        return None

    def client_address(self, request: Request) -> Address | None:
        """Who ``request`` is from (raises a 400 for an unreadable proxy header).

        The allow-list and the rate per address both use this one answer.
        """
        return client_address(request, self.trusted_proxies)

    # --- a routed registry request ---------------------------------------

    def authorize(self, request: Request, target: Target) -> bool:
        """Raise a 401 unless the request may have ``target``.

        True: a ``/v2/`` ping with a valid token, which Docxy answers itself
        (upstream would challenge it: the client's token is not for there).
        """
        if not self.accounts_on:
            return False
        notes = getattr(request, "notes", {})
        grant = notes.get("grant")
        presented = bool(notes.get("token_presented"))
        mirror = target.mirror
        if target.route.kind is Kind.BASE:
            if grant is not None:
                return True
            raise unauthorized(
                "log in to this mirror",
                _bearer(
                    mirror.ping_realm, None, "invalid_token" if presented else None
                ),
            )
        if not target.route.name:  # a catalog: not served per repository
            if grant is not None or (self.anonymous and not presented):
                return False
            raise unauthorized("log in to this mirror", _bearer(mirror.ping_realm))
        if isinstance(grant, Grant) and grant.covers(
            mirror.upstream.name, target.route.name
        ):
            return False
        if grant is None and not presented and self.anonymous:
            return False
        client_name = (
            f"{target.prefix}/{target.route.name}"
            if target.prefix
            else (target.route.name)
        )
        error = None
        if grant is not None:
            error = "insufficient_scope"
        elif presented:
            error = "invalid_token"
        raise unauthorized(
            "a token of this mirror for this repository is needed",
            _bearer(mirror.public_realm, pull_scope(client_name), error),
        )

    # --- the token realm --------------------------------------------------

    async def issue(
        self, request: Request, mirror: Mirror, params: list[tuple[str, str]]
    ) -> None:
        """Answer a token request of Docxy's realm with Docxy's own token."""
        assert self.accounts is not None and self.signer is not None
        user, password = _login(request, params)
        if user is None:
            if not self.anonymous:
                raise unauthorized("log in to this mirror", BASIC_CHALLENGE)
            subject = ANONYMOUS
        elif password is None or not await self.accounts.check(user, password):
            raise unauthorized("incorrect username or password", BASIC_CHALLENGE)
        else:
            subject = user
        granted: set[tuple[str, str]] = set()

        def one(text: str) -> str:
            scope = Scope.parse(text)
            if scope.repository and "pull" in scope.actions.split(","):
                granted.add((mirror.upstream.name, scope.name))
            return text

        for key, value in params:
            if key == "scope":
                map_scopes(value, one)
        record(request, account=subject)
        token = self.signer.issue(subject, granted)
        write_token(request, token, int(self.signer.lifetime))


def _bearer(realm: str, scope: str | None = None, error: str | None = None) -> str:
    parts = [f'realm="{realm}"', f'service="{SERVICE}"']
    if scope is not None:
        parts.append(f'scope="{scope}"')
    if error is not None:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def _login(
    request: Request, params: list[tuple[str, str]]
) -> tuple[str | None, str | None]:
    """(user, password) from HTTP Basic, or an OAuth2 password grant's form."""
    form = dict(params)
    if request.method == b"POST" and form.get("grant_type") == "password":
        return form.get("username") or None, form.get("password")
    value = request.getHeader(b"authorization")
    if not value:
        return None, None
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return "", None  # something, but no login: refused
    try:
        user, sep, password = (
            base64.b64decode(encoded.strip(), validate=True)
            .decode("utf-8")
            .partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return "", None
    return user, password if sep else None


def _peer(request: Request) -> Address | None:
    return parse_address(getattr(request.getClientAddress(), "host", ""))


def _rate_key(address: Address | None) -> str:
    """An IPv4 address, or the /64 of an IPv6 one (what one client holds)."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
