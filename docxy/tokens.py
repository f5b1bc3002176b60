"""``/auth/token`` and ``/auth/<upstream>/token``: token requests, proxied.

Every challenge Docxy relays names one of these as its realm, so clients get
their tokens through Docxy (the upstream's auth host may be unreachable for
them). The request is forwarded to the upstream's realm with ``service``
forced, scopes translated to upstream naming, and the client's credentials.
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import parse_qsl, urlencode

from twisted.web.client import FileBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .access_control import AccessGate
from .cache.offline import TokenBook, answer_token
from .challenge import rewrite_scope
from .errors import (
    RegistryError,
    name_invalid,
    not_found,
    scope_invalid,
    unsupported_method,
    write_error,
)
from .forward import Forwarder
from .headers import relayed_response_headers, upstream_request_headers
from .notes import record
from .oci import (
    MAX_TOKEN_SCOPES,
    Scope,
    is_valid_name,
    scope_problem,
    split_scopes,
)
from .own_tokens import ANONYMOUS_TOKEN, write_token
from .ratelimit import is_unavailable, unavailable
from .realm import NoTokenServiceError
from .relay import Exchange, Reissue
from .routing import Mirror, Router
from .upstream_client import UpstreamError, read_small_body

TOKEN_METHODS = (b"GET", b"POST")
MAX_TOKEN_FORM = 64 * 1024
ANONYMOUS_TOKEN_LIFETIME = 300
MAX_TOKEN_ANSWER = 64 * 1024
# A token answer without expires_in lasts 60 s (the distribution spec).
DEFAULT_TOKEN_LIFETIME = 60.0


def check_scopes(params: list[tuple[str, str]]) -> None:
    """Refuse (400) a token request for scopes no mirror client sends.

    Before anything else happens, so that nothing malformed reaches an
    upstream realm (or Docxy's own): a scope that is not
    ``repository:<valid name>:<actions>`` or ``registry:catalog:<actions>``,
    or more than :data:`MAX_TOKEN_SCOPES` of them.
    """
    scopes = [s for key, value in params if key == "scope" for s in split_scopes(value)]
    if len(scopes) > MAX_TOKEN_SCOPES:
        raise scope_invalid(f"at most {MAX_TOKEN_SCOPES} in one token request", None)
    for text in scopes:
        problem = scope_problem(text)
        if problem is not None:
            raise scope_invalid(problem, text)
        scope = Scope.parse(text)
        if scope.resource_type == "repository" and not is_valid_name(scope.name):
            raise name_invalid(scope.name)


def token_params(
    params: list[tuple[str, str]], service: str | None, library_prefix: bool
) -> list[tuple[str, str]]:
    """Client token parameters as the upstream realm must see them.

    Order and duplicates are kept (several ``scope`` are legal); ``service``
    is forced to the upstream's; repository scopes get ``library/``.
    """
    out: list[tuple[str, str]] = []
    saw_service = False
    for key, value in params:
        if key == "service" and service is not None:
            if saw_service:
                continue
            saw_service, value = True, service
        elif key == "scope":
            value = rewrite_scope(value, library_prefix)
        out.append((key, value))
    if service is not None and not saw_service:
        out.insert(0, ("service", service))
    return out


class TokenResource(Resource):
    """One upstream's token endpoint (scopes with an alias may re-route it)."""

    isLeaf = True

    def __init__(
        self,
        forwarder: Forwarder,
        router: Router,
        mirror: Mirror,
        by_alias: bool = False,
        offline: TokenBook | None = None,
        gate: AccessGate | None = None,
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.router = router
        self.mirror = mirror
        self.by_alias = by_alias
        # With a cache: an offline token when the realm is unreachable (or
        # rate-limiting), and a note of who asked for each upstream token.
        self.offline = offline
        # With accounts on, Docxy's realm issues its own tokens instead.
        self.gate = gate

    def render(self, request: Request) -> int:
        if request.postpath not in ([], [b""]):
            write_error(request, not_found(request.path.decode("latin-1")))
        elif request.method not in TOKEN_METHODS:
            write_error(
                request,
                unsupported_method(request.method.decode("latin-1"), TOKEN_METHODS),
            )
        else:
            self.forwarder.run(request, self._token_or_offline(request))
        return NOT_DONE_YET

    async def _token_or_offline(self, request: Request) -> None:
        if request.method == b"POST":
            params = _form(request)
        else:
            _, _, query = request.uri.partition(b"?")
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        check_scopes(params)
        principal = None
        if self.offline is not None:
            principal = self.offline.principal(
                request.getHeader(b"authorization"), params
            )
        try:
            await self._token(request, params, principal)
        except UpstreamError:
            if self.offline is None or request.startedWriting:
                raise
            answer_token(request, self.offline.offline_token(principal))

    async def _token(
        self, request: Request, params: list[tuple[str, str]], principal: str | None
    ) -> None:
        mirror, params = self._route(params)
        record(request, upstream=mirror.upstream.name)
        if self.gate is not None and self.gate.accounts_on:
            await self.gate.issue(request, mirror, params)
            return
        try:
            realm = await mirror.realms.get()
        except NoTokenServiceError:
            # An open upstream: the client still wants a token to send.
            write_token(request, ANONYMOUS_TOKEN, ANONYMOUS_TOKEN_LIFETIME)
            return
        if mirror.serves_anonymous_tokens and not request.getHeader(b"authorization"):
            # Docxy pulls for this client with its own upstream tokens.
            write_token(request, ANONYMOUS_TOKEN, ANONYMOUS_TOKEN_LIFETIME)
            return
        params = token_params(params, realm.service, mirror.upstream.library_prefix)
        headers = upstream_request_headers(request.requestHeaders)
        headers.removeHeader(b"range")
        reissue = Reissue(mirror, mirror.public_realm)
        if request.method == b"POST":
            headers.setRawHeaders(
                b"content-type", [b"application/x-www-form-urlencoded"]
            )
            body = FileBodyProducer(BytesIO(urlencode(params).encode("ascii")))
            exchange = Exchange(b"POST", realm.url, headers, body, challenges=reissue)
        else:
            sep = "&" if "?" in realm.url else "?"
            url = f"{realm.url}{sep}{urlencode(params)}"
            exchange = Exchange(b"GET", url, headers, challenges=reissue)
        if self.offline is None:
            await self.forwarder.relay.relay(request, exchange)
            return
        relay = self.forwarder.relay
        answer = await relay.client.request(
            exchange.method, exchange.url, exchange.headers, exchange.body
        )
        response = answer.response
        if is_unavailable(response.code):
            raise await unavailable(response)
        if response.code != 200 or principal is None:
            await relay.answer(request, exchange, answer)
            return
        issued = await read_small_body(response, MAX_TOKEN_ANSWER)
        token, expires_in = _issued(issued)
        if token is not None:
            self.offline.issued(token, principal, expires_in)
        record(request, upstream_status=200)
        request.setResponseCode(200)
        for name, values in relayed_response_headers(response.headers):
            request.responseHeaders.setRawHeaders(name, values)
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(issued)])
        request.write(issued)
        request.finish()

    def _route(
        self, params: list[tuple[str, str]]
    ) -> tuple[Mirror, list[tuple[str, str]]]:
        scopes = [value for key, value in params if key == "scope"]
        mirror, translated = self.router.token_scopes(
            self.mirror, scopes, self.by_alias
        )
        it = iter(translated)
        return mirror, [(k, next(it) if k == "scope" else v) for k, v in params]


def _issued(body: bytes) -> tuple[str | None, float]:
    """The token of a token service's answer, and its lifetime in seconds."""
    try:
        document = json.loads(body)
        token = document.get("token") or document.get("access_token")
        expires_in = float(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        return None, 0.0
    return (token if isinstance(token, str) else None), expires_in


def _form(request: Request) -> list[tuple[str, str]]:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
    if ctype.lower() != b"application/x-www-form-urlencoded":
        raise RegistryError(
            415, "UNSUPPORTED", "token POST must be application/x-www-form-urlencoded"
        )
    assert request.content is not None
    raw = request.content.read(MAX_TOKEN_FORM + 1)
    if len(raw) > MAX_TOKEN_FORM:
        raise RegistryError(413, "SIZE_INVALID", "token request too large")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
