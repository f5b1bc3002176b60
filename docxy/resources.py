"""The Resource tree: where every request goes.

::

    /                           404 envelope (Docxy is not an open proxy)
    /v2/...                     RegistryResource: the registry API, read-only,
                                routed (docxy.routing) and proxied (docxy.forward)
    /<alias>/v2/...             the same, for one upstream (containerd host
                                URLs with a path)
    /auth/token                 TokenResource for the default upstream
    /auth/<upstream>/token      TokenResource for each upstream (docxy.tokens)
                                (all of the above pass the AccessGate first:
                                allow-list, accounts, client rate;
                                docxy.access_control)
    /.well-known/acme-challenge ACME HTTP-01 answers (docxy.tls.http01)
    /health                     HealthResource: liveness, no upstream call
    /ready                      ReadyResource: readiness (docxy.probes)
"""

from __future__ import annotations

import json

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import __version__
from .access_control import AccessGate
from .cache.pullthrough import PullThroughCache
from .errors import (
    API_VERSION,
    API_VERSION_HEADER,
    ErrorResource,
    RegistryError,
    not_found,
    unsupported_method,
    write_error,
)
from .forward import Forwarder
from .notes import record
from .probes import Readiness, ReadyResource
from .relay import Exchange
from .routing import Mirror, Router, Target
from .tls.http01 import AcmeChallengeResource
from .tokens import TokenResource

READ_METHODS = (b"GET", b"HEAD")


def _path(request: Request) -> str:
    return request.path.decode("latin-1")


def raw_postpath(request: Request) -> list[bytes]:
    """The path segments after this resource, still percent-encoded.

    twisted.web decodes ``postpath``, which would turn ``a%2Fb`` into two
    name components; registry names never contain ``%``, so the raw form
    is validated instead.
    """
    return request.path.split(b"/")[1 + len(request.prepath or []) :]


class RootResource(Resource):
    """The top of the Resource tree: ``/v2/``, the token realms, aliases, probes.

    The access gate and the https redirect run here, before any child does
    work, and every unknown path is a 404 in the error envelope.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        router: Router,
        https_redirect: str | None = None,
        cache: PullThroughCache | None = None,
        gate: AccessGate | None = None,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.putChild(
            b"v2", RegistryResource(forwarder, router, cache=cache, gate=gate)
        )
        auth = NotFoundResource()
        # The mirror-wide realm (named by /v2/ pings): routes by alias too.
        offline = cache.tokens if cache is not None else None
        auth.putChild(
            b"token",
            TokenResource(
                forwarder,
                router,
                router.default,
                by_alias=True,
                offline=offline,
                gate=gate,
            ),
        )
        for name, mirror in router.mirrors.items():
            per_upstream = NotFoundResource()
            per_upstream.putChild(
                b"token",
                TokenResource(forwarder, router, mirror, offline=offline, gate=gate),
            )
            auth.putChild(name.encode("ascii"), per_upstream)
        self.putChild(b"auth", auth)
        # /<alias>/v2/...: single-component aliases only (a path segment).
        for alias, upstream in router.upstreams.by_alias.items():
            if "/" not in alias and alias.encode() not in self.children:
                mounted = NotFoundResource()
                mounted.putChild(
                    b"v2",
                    RegistryResource(
                        forwarder, router, router.mirrors[upstream.name], cache, gate
                    ),
                )
                self.putChild(alias.encode("ascii"), mounted)
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
        if self.gate is not None and path not in _UNGUARDED:
            # Who may use the mirror (docxy.access_control), before any work.
            error = self.gate.admit(request, registry=path != b"auth")
            if error is not None:
                return ErrorResource(error)
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def getChild(self, path: bytes, request: Request) -> IResource:
        return ErrorResource(not_found(_path(request)))

    def render(self, request: Request) -> int:
        write_error(request, not_found(_path(request)))
        return NOT_DONE_YET


class NotFoundResource(Resource):
    """An inner node of the tree: unknown children and itself are 404 envelopes."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return ErrorResource(not_found(_path(request)))

    def render(self, request: Request) -> int:
        write_error(request, not_found(_path(request)))
        return NOT_DONE_YET


# With https-redirect on, plain HTTP still serves these (ACME HTTP-01 needs it).
_SERVED_OVER_HTTP = frozenset({b"health", b"ready", b".well-known"})
# Open to everyone: probes, and ACME's CA (which is on no allow-list).
_UNGUARDED = _SERVED_OVER_HTTP


class RedirectResource(Resource):
    """301 to the same path under the configured https public URL."""

    isLeaf = True

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base.encode("ascii")

    def render(self, request: Request) -> bytes:
        # Only an origin-form path is appended: "GET @evil.example/" must not
        # turn the public URL into https://mirror@evil.example/.
        uri = request.uri
        if not uri.startswith(b"/") or uri.startswith(b"//"):
            uri = b"/"
        request.setResponseCode(301)
        request.setHeader(b"location", self.base + uri)
        request.setHeader(b"content-type", b"text/plain")
        return b"moved to https\n"


class HealthResource(Resource):
    """Liveness: answers while the reactor runs, whatever the upstreams or cache."""

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
    """``/v2/``: validate and route the request, then proxy it upstream."""

    isLeaf = True

    def __init__(
        self,
        forwarder: Forwarder,
        router: Router,
        fixed: Mirror | None = None,
        cache: PullThroughCache | None = None,
        gate: AccessGate | None = None,
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.router = router
        self.fixed = fixed
        self.cache = cache
        self.gate = gate

    def render(self, request: Request) -> int:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        try:
            if request.method not in READ_METHODS:
                raise unsupported_method(request.method.decode("latin-1"), READ_METHODS)
            target = self.router.route(request, raw_postpath(request), self.fixed)
            if self.gate is not None and self.gate.authorize(request, target):
                _answer_ping(request)
                return NOT_DONE_YET
        except RegistryError as error:
            write_error(request, error)
            return NOT_DONE_YET
        record(request, upstream=target.mirror.upstream.name)
        if target.namespace is not None:
            # OCI distribution spec, "Registry Proxying".
            request.setHeader(b"oci-namespace", target.namespace.encode("ascii"))
        record(request, route=target.route.kind.value or "base")
        exchange = target.exchange(request)
        self.forwarder.run(request, self._serve(request, exchange, target))
        return NOT_DONE_YET

    async def _serve(
        self, request: Request, exchange: Exchange, target: Target
    ) -> None:
        ours = await target.use_mirror_token(exchange)
        if self.cache is not None:
            await self.cache.serve(request, exchange, target)
        else:
            await self.forwarder.relay.relay(request, exchange)
        if ours and request.code == 401:
            target.mirror_token_refused()


def _answer_ping(request: Request) -> None:
    """``/v2/`` for a client holding a valid token of Docxy's realm."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"2")
    if request.method != b"HEAD":
        request.write(b"{}")
    request.finish()


def build_tree(
    forwarder: Forwarder,
    router: Router,
    https_redirect: str | None = None,
    cache: PullThroughCache | None = None,
    readiness: Readiness | None = None,
    gate: AccessGate | None = None,
) -> RootResource:
    root = RootResource(forwarder, router, https_redirect, cache, gate)
    if readiness is not None:
        root.putChild(b"ready", ReadyResource(readiness))
    return root
