"""The Resource tree: where every request goes.

::

    /                   404 envelope (Docxy is not an open proxy)
    /v2/...             RegistryResource: registry API, read-only, proxied
    /auth/token         TokenResource: token requests, proxied to the realm
    /health             HealthResource: liveness, no upstream call
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import parse_qsl, quote, unquote, urlencode

from twisted.web.client import FileBodyProducer
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import __version__
from .challenge import rewrite_scope
from .errors import (
    API_VERSION,
    API_VERSION_HEADER,
    ErrorResource,
    RegistryError,
    not_found,
    unsupported_method,
    write_error,
)
from .forward import Exchange, Forwarder
from .headers import upstream_request_headers
from .names import Kind, parse_v2_path
from .realm import NoTokenServiceError, RealmDirectory
from .tls.challenges import AcmeChallengeResource

READ_METHODS = (b"GET", b"HEAD")
TOKEN_METHODS = (b"GET", b"POST")
MAX_TOKEN_FORM = 64 * 1024
# Query parameters meant for the mirror itself, never sent upstream.
_MIRROR_PARAMS = frozenset({"ns"})


def _path(request: Request) -> str:
    return request.path.decode("latin-1")


def raw_postpath(request: Request) -> list[bytes]:
    """The path segments after this resource, still percent-encoded.

    twisted.web decodes ``postpath``, which would turn ``a%2Fb`` into two
    name components; registry names never contain ``%``, so the raw form
    is validated instead.
    """
    return request.path.split(b"/")[1 + len(request.prepath or []) :]


def _raw_query(request: Request) -> str:
    _, _, query = request.uri.partition(b"?")
    return query.decode("latin-1")


def upstream_query(request: Request) -> str:
    """The client's query minus mirror-only parameters, bytes kept as sent."""
    kept = [
        quote(part, safe="=&%+:/,;@!$'()*-._~")
        for part in _raw_query(request).split("&")
        if part and unquote(part.partition("=")[0]) not in _MIRROR_PARAMS
    ]
    return "&".join(kept)


class RootResource(Resource):
    def __init__(
        self, registry: Resource, token: Resource, https_redirect: str | None = None
    ) -> None:
        super().__init__()
        self.putChild(b"v2", registry)
        auth = Resource()
        auth.putChild(b"token", token)
        self.putChild(b"auth", auth)
        self.putChild(b"health", HealthResource())
        well_known = Resource()
        well_known.putChild(b"acme-challenge", AcmeChallengeResource())
        self.putChild(b".well-known", well_known)
        self.https_redirect = https_redirect

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if (
            self.https_redirect is not None
            and not request.isSecure()
            and path not in _SERVED_OVER_HTTP
        ):
            return RedirectResource(self.https_redirect)
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def getChild(self, path: bytes, request: Request) -> IResource:
        return ErrorResource(not_found(_path(request)))

    def render(self, request: Request) -> int:
        write_error(request, not_found(_path(request)))
        return NOT_DONE_YET


# With https-redirect on, plain HTTP still serves these (ACME HTTP-01 needs it).
_SERVED_OVER_HTTP = frozenset({b"health", b".well-known"})


class RedirectResource(Resource):
    """301 to the same path under the configured https public URL."""

    isLeaf = True

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base.encode("ascii")

    def render(self, request: Request) -> bytes:
        request.setResponseCode(301)
        request.setHeader(b"location", self.base + request.uri)
        request.setHeader(b"content-type", b"text/plain")
        return b"moved to https\n"


class HealthResource(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        if request.method not in READ_METHODS:
            write_error(
                request, unsupported_method(request.method.decode(), READ_METHODS)
            )
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"status": "ok", "version": __version__}).encode()


class RegistryResource(Resource):
    """``/v2/``: validate the route, then proxy it upstream."""

    isLeaf = True

    def __init__(
        self, forwarder: Forwarder, upstream: str, library_prefix: bool
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.upstream = upstream.rstrip("/")
        self.library_prefix = library_prefix

    def render(self, request: Request) -> int:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        try:
            if request.method not in READ_METHODS:
                raise unsupported_method(request.method.decode("latin-1"), READ_METHODS)
            route = parse_v2_path(raw_postpath(request), _path(request))
        except RegistryError as error:
            write_error(request, error)
            return NOT_DONE_YET
        url = self.upstream + route.upstream_path(self.library_prefix)
        query = upstream_query(request)
        if query:
            url = f"{url}?{query}"
        self.forwarder.forward(
            request,
            Exchange(
                request.method,
                url,
                upstream_request_headers(request.requestHeaders),
                blob_digest=route.reference if route.kind is Kind.BLOBS else None,
            ),
        )
        return NOT_DONE_YET


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
    """``/auth/token``: the realm clients are sent to by rewritten challenges."""

    isLeaf = True

    def __init__(
        self, forwarder: Forwarder, realms: RealmDirectory, library_prefix: bool
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.realms = realms
        self.library_prefix = library_prefix

    def render(self, request: Request) -> int:
        if request.postpath not in ([], [b""]):
            write_error(request, not_found(_path(request)))
        elif request.method not in TOKEN_METHODS:
            write_error(
                request,
                unsupported_method(request.method.decode("latin-1"), TOKEN_METHODS),
            )
        else:
            self.forwarder.run(request, self._token(request))
        return NOT_DONE_YET

    async def _token(self, request: Request) -> None:
        try:
            realm = await self.realms.get()
        except NoTokenServiceError:
            raise RegistryError(
                404, "UNSUPPORTED", "the upstream registry does not issue tokens"
            ) from None
        headers = upstream_request_headers(request.requestHeaders)
        headers.removeHeader(b"range")
        if request.method == b"POST":
            params = self._form(request)
            body = urlencode(token_params(params, realm.service, self.library_prefix))
            headers.setRawHeaders(
                b"content-type", [b"application/x-www-form-urlencoded"]
            )
            exchange = Exchange(
                b"POST",
                realm.url,
                headers,
                FileBodyProducer(BytesIO(body.encode("ascii"))),
                follow_redirects=False,
            )
        else:
            params = parse_qsl(_raw_query(request), keep_blank_values=True)
            query = urlencode(token_params(params, realm.service, self.library_prefix))
            sep = "&" if "?" in realm.url else "?"
            exchange = Exchange(b"GET", f"{realm.url}{sep}{query}", headers)
        await self.forwarder.relay(request, exchange)

    @staticmethod
    def _form(request: Request) -> list[tuple[str, str]]:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if ctype.lower() != b"application/x-www-form-urlencoded":
            raise RegistryError(
                415,
                "UNSUPPORTED",
                "token POST must be application/x-www-form-urlencoded",
            )
        assert request.content is not None
        raw = request.content.read(MAX_TOKEN_FORM + 1)
        if len(raw) > MAX_TOKEN_FORM:
            raise RegistryError(413, "SIZE_INVALID", "token request too large")
        return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)


def build_tree(
    forwarder: Forwarder,
    realms: RealmDirectory,
    upstream: str,
    library_prefix: bool,
    https_redirect: str | None = None,
) -> RootResource:
    return RootResource(
        RegistryResource(forwarder, upstream, library_prefix),
        TokenResource(forwarder, realms, library_prefix),
        https_redirect,
    )
