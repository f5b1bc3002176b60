"""Which upstream a request is for, and how the client named things there.

Order (field-notes section 3): containerd's ``?ns=``, then a path
prefix (``/<alias>/v2/...`` or ``/v2/<alias>/<name>/...``), then the Host
header, then the default upstream. The Host header only *chooses* among
configured upstreams; no URL is ever built from it, and nothing a client
sends can make Docxy contact a host that is not configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote

from twisted.web.server import Request

from .errors import RegistryError, name_invalid
from .headers import upstream_request_headers
from .names import Kind, Route, parse_v2_path, upstream_name
from .oci import Scope, is_valid_name, map_scopes, pull_scope
from .realm import RealmDirectory
from .relay import Exchange, Reissue
from .upstream_set import Upstream, UpstreamSet, normalize_host

if TYPE_CHECKING:
    from .mirror_tokens import MirrorTokens


@dataclass(frozen=True)
class Mirror:
    """One upstream at run time, with Docxy's own token realm for it."""

    upstream: Upstream
    public_realm: str  # named by challenges on repository paths
    ping_realm: str  # named by challenges on /v2/
    realms: RealmDirectory
    # Docxy's own upstream tokens (docxy.mirror_tokens): with an account for
    # this upstream, or with Docxy's accounts on; else clients bring theirs.
    tokens: MirrorTokens | None = None

    @property
    def serves_anonymous_tokens(self) -> bool:
        """Whether an anonymous client's token is Docxy's, not the upstream's."""
        return self.tokens is not None

    def content_url(self, repo: str, kind: str, reference: str) -> str:
        """The upstream URL of a manifest or blob; ``repo`` in upstream naming."""
        return f"{self.upstream.url}/v2/{repo}/{kind}/{reference}"


@dataclass(frozen=True)
class Target:
    """A routed ``/v2/`` request."""

    mirror: Mirror
    route: Route  # the name without any alias prefix
    prefix: str = ""  # the alias the client put before the name
    namespace: str | None = None  # the ns that chose the upstream

    @property
    def upstream_path(self) -> str:
        return self.route.upstream_path(self.mirror.upstream.library_prefix)

    def exchange(self, request: Request) -> Exchange:
        """The upstream request for ``request``, and how to relay its answer.

        The URL is the configured upstream's, never built from anything
        but the validated route and the client's query (minus ``ns``).
        """
        url = self.mirror.upstream.url + self.upstream_path
        query = upstream_query(request)
        if query:
            url = f"{url}?{query}"
        route, mirror = self.route, self.mirror
        ping = route.kind is Kind.BASE
        return Exchange(
            request.method,
            url,
            upstream_request_headers(request.requestHeaders),
            digest=route.reference if ":" in route.reference else None,
            blob=route.kind is Kind.BLOBS,
            challenges=Reissue(
                mirror,
                mirror.ping_realm if ping else mirror.public_realm,
                self.scope_to_client if self.prefix else None,
            ),
        )

    @property
    def pull_scope(self) -> str | None:
        """The upstream scope this request needs, None for ``/v2/`` itself."""
        if self.route.kind is Kind.BASE or not self.route.name:
            return None
        name = upstream_name(self.route.name, self.mirror.upstream.library_prefix)
        return pull_scope(name)

    async def use_mirror_token(self, exchange: Exchange) -> bool:
        """Docxy's own upstream token on ``exchange``, if the client brought none.

        The client's own credentials win for that client; ``/v2/`` itself is
        left to the client's challenge dance, so a client with credentials
        still gets to send them.
        """
        tokens, scope = self.mirror.tokens, self.pull_scope
        if tokens is None or scope is None:
            return False
        if exchange.headers.hasHeader(b"authorization"):
            return False
        value = await tokens.authorization(scope)
        if value is None:
            return False
        exchange.headers.setRawHeaders(b"authorization", [value])
        return True

    def mirror_token_refused(self) -> None:
        """The upstream answered 401 to Docxy's own token: fetch a new one next."""
        if self.mirror.tokens is not None and self.pull_scope is not None:
            self.mirror.tokens.forget(self.pull_scope)

    def scope_to_client(self, scope: str) -> str:
        """Upstream naming -> the client's (alias prefix back on) in a scope."""
        if not self.prefix:
            return scope
        ours = upstream_name(self.route.name, self.mirror.upstream.library_prefix)

        def one(text: str) -> str:
            parsed = Scope.parse(text)
            if parsed.repository and parsed.name == ours:
                return parsed.renamed(f"{self.prefix}/{self.route.name}")
            return text

        return map_scopes(scope, one)


def unknown_registry(ns: str) -> RegistryError:
    return RegistryError(
        404,
        "NAME_UNKNOWN",
        "this mirror does not serve that registry",
        {"ns": ns},
    )


class Router:
    """Picks the upstream of every request from the configured set only.

    One place decides, in one order, so that a ``/v2/`` request and the
    token request that follows it reach the same upstream: a client must
    never get a token from one registry for content of another.
    """

    def __init__(self, upstreams: UpstreamSet, mirrors: dict[str, Mirror]) -> None:
        self.upstreams = upstreams
        self.mirrors = mirrors
        self.default = mirrors[upstreams.default.name]

    def route(
        self, request: Request, segments: list[bytes], fixed: Mirror | None = None
    ) -> Target:
        """Route a ``/v2/`` request; ``fixed`` when mounted under ``/<alias>/``."""
        route = parse_v2_path(segments, request.path.decode("latin-1"))
        ns = namespace_param(request)
        if ns is not None:
            upstream = self.upstreams.by_namespace.get(normalize_host(ns))
            if upstream is None:
                raise unknown_registry(ns)
            # Echo the namespace as resolved, never the client's raw value.
            return self._strip_alias(
                route, self.mirrors[upstream.name], normalize_host(ns)
            )
        if fixed is not None:
            return Target(fixed, route)
        found = self.upstreams.alias_at_start(route.name)
        if found is not None:
            alias, upstream = found
            stripped = Route(route.kind, route.name[len(alias) + 1 :], route.reference)
            return Target(self.mirrors[upstream.name], stripped, alias)
        return Target(self.by_host(request), route)

    def by_host(self, request: Request) -> Mirror:
        host = request.getHeader(b"host")
        if host:
            upstream = self.upstreams.by_host.get(
                normalize_host(host.decode("latin-1"))
            )
            if upstream is not None:
                return self.mirrors[upstream.name]
        return self.default

    def _strip_alias(self, route: Route, mirror: Mirror, ns: str) -> Target:
        """containerd may also put the registry in the path: drop it if it is ours."""
        found = self.upstreams.alias_at_start(route.name)
        if found is not None and found[1] is mirror.upstream:
            alias = found[0]
            route = Route(route.kind, route.name[len(alias) + 1 :], route.reference)
            return Target(mirror, route, alias, ns)
        return Target(mirror, route, "", ns)

    def token_scopes(
        self, mirror: Mirror, scopes: list[str], by_alias: bool = False
    ) -> tuple[Mirror, list[str]]:
        """Which upstream a token request is for, and its scopes in upstream naming.

        A realm of one upstream strips only that upstream's own aliases.
        ``by_alias`` (the mirror-wide realm): clients that compute scopes
        from their own image name (podman with a ``mirror/ghcr`` location)
        send ``repository:ghcr/owner/img:pull`` to the realm their ``/v2/``
        ping named; the alias says where the token must come from.
        """
        chosen: Mirror | None = None

        def one(text: str) -> str:
            nonlocal chosen
            scope = Scope.parse(text)
            if not scope.repository:
                return text
            found = self.upstreams.alias_at_start(scope.name)
            if found is not None and not (by_alias or found[1] is mirror.upstream):
                found = None
            bare = scope.name[len(found[0]) + 1 :] if found is not None else scope.name
            if not is_valid_name(bare):
                raise name_invalid(bare)
            if found is None:
                return text
            target = self.mirrors[found[1].name]
            if chosen is not None and chosen is not target:
                raise RegistryError(
                    400,
                    "DENIED",
                    "one token request cannot cover several registries",
                    None,
                )
            chosen = target
            return scope.renamed(bare)

        out = [map_scopes(value, one) for value in scopes]
        return chosen or mirror, out


# Query parameters meant for the mirror itself, never sent upstream.
_MIRROR_PARAMS = frozenset({"ns"})


def namespace_param(request: Request) -> str | None:
    for key, value in parse_qsl(_raw_query(request), keep_blank_values=True):
        if key == "ns":
            return value
    return None


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
