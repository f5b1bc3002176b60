"""The HTTP client side: one connection pool, verified TLS, redirects, timeouts.

Docxy speaks to upstreams with a plain ``twisted.web.client.Agent`` rather
than treq's ``HTTPClient``: treq always stacks a gzip-decoding agent (which
changes bytes and drops lengths, fatal for digest-checked content) and a
cookie jar (which would share one user's upstream cookies with every other
user). The in-memory tests drive it through treq's
``RequestTraversalAgent`` (``tests/support/memory.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit
from weakref import WeakKeyDictionary

from OpenSSL import SSL
from twisted.internet import abstract, defer, error, tcp
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from .oci import MAX_REDIRECTS

if TYPE_CHECKING:
    from .metrics import Metrics
    from .pull_budget import PullBudget

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Dropped when a redirect leaves the origin the client's credentials were for.
_CREDENTIAL_HEADERS = (b"authorization", b"cookie")


class UpstreamError(Exception):
    """The upstream could not be reached or answered nonsense (a 502)."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not connect or answer in time (a 504)."""


@implementer(IOpenSSLTrustRoot)
class SystemPlusCATrustRoot:
    """The platform's trusted CAs plus one operator-supplied bundle."""

    def __init__(self, ca_file: Path) -> None:
        self.ca_file = ca_file

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        context.load_verify_locations(str(self.ca_file))


def tls_policy(ca_file: Path | None) -> IPolicyForHTTPS:
    """Verified TLS (service_identity checks the name) with an optional extra CA."""
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=SystemPlusCATrustRoot(ca_file))


def make_agent(
    reactor: object,
    *,
    ca_file: Path | None,
    connect_timeout: float,
    max_connections: int,
) -> tuple[Agent, HTTPConnectionPool]:
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_connections
    pool.cachedConnectionTimeout = 120
    pool.retryAutomatically = True
    agent = Agent(
        reactor,
        contextFactory=tls_policy(ca_file),
        connectTimeout=connect_timeout,
        pool=pool,
    )
    return agent, pool


# Bytes per read of an upstream socket (Twisted's default is 64 KiB): fewer
# reads, callbacks and pause/resume toggles per blob.
UPSTREAM_READ = 256 * 1024


# Plain TCP upstream connections and their protocols (see raw_body).
_ON_SOCKET: WeakKeyDictionary[tcp.Connection, _WideReads] = WeakKeyDictionary()


class _WideReads(HTTP11ClientProtocol):
    def connectionMade(self) -> None:
        super().connectionMade()
        # The socket is the transport, or under TLS the transport's transport.
        for transport in (self.transport, getattr(self.transport, "transport", None)):
            if isinstance(transport, abstract.FileDescriptor):
                transport.bufferSize = UPSTREAM_READ
        if type(self.transport) is tcp.Client:
            _ON_SOCKET[self.transport] = self


@dataclass(frozen=True)
class RawBody:
    """The rest of an identity-encoded body, still unread in its socket.

    Whoever moves ``n`` bytes out of ``transport``'s socket itself (a
    ``splice(2)`` into a file or a pipe, a relay's ``recv_into``) says so with
    ``consumed(n)``; the client's parser then expects only what is left,
    and a body ends (and its connection goes back to the pool) as if the
    parser had read it all.
    """

    transport: tcp.Client
    decoder: Any  # twisted.web.http._IdentityTransferDecoder

    @property
    def remaining(self) -> int:
        return int(self.decoder.contentLength)

    def consumed(self, count: int) -> None:
        self.decoder.contentLength -= count


def raw_body(body_transport: object) -> RawBody | None:
    """The socket under a body being delivered (a body protocol's transport),
    if it is plain TCP with a known length and nothing of it is buffered."""
    socket = getattr(body_transport, "_producer", None)
    protocol = _ON_SOCKET.get(socket) if isinstance(socket, tcp.Client) else None
    parser = getattr(protocol, "_parser", None)
    decoder = getattr(parser, "bodyDecoder", None)
    if (
        socket is None
        or type(decoder).__name__ != "_IdentityTransferDecoder"
        or not isinstance(getattr(decoder, "contentLength", None), int)
        or getattr(parser, "_buffer", b"") != b""
        or socket.disconnecting
    ):
        return None
    return RawBody(socket, decoder)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # one "Starting factory" log line per upstream connection is noise

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return _WideReads(self._quiescentCallback)


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


@dataclass(frozen=True)
class UpstreamResponse:
    """An upstream answer, with the URL it came from after ``redirects`` hops."""

    response: IResponse
    url: str
    redirects: int


class _Discard(Protocol):
    """Reads and drops a body so its connection can go back to the pool."""

    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(None)


class BodyTooLargeError(UpstreamError):
    """A body that should be small (a manifest, a token) was not."""


class _Collect(Protocol):
    """Reads a small body into memory, refusing more than ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.cap:
            if self.transport is not None and not self.done.called:
                cast(IPushProducer, self.transport).stopProducing()
                self.done.errback(BodyTooLargeError(f"body over {self.cap} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(UpstreamError("connection lost in the body"))


def read_small_body(response: IResponse, cap: int) -> defer.Deferred[bytes]:
    """The whole body of a response known to be small (manifests, tokens)."""
    collector = _Collect(cap)
    response.deliverBody(collector)
    return collector.done


def discard_body(response: IResponse) -> defer.Deferred[None]:
    protocol = _Discard()
    response.deliverBody(protocol)
    return protocol.done


def discard_unclaimed(result: object) -> None:
    """An upstream answer nobody took (its client left): read to its end, so
    its connection goes back to the pool rather than staying half-read."""
    if isinstance(result, UpstreamResponse):
        discard_body(result.response)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default)


def same_origin(one: str, other: str) -> bool:
    """Whether two URLs have one scheme, host and port (credentials may cross)."""
    return _origin(one) == _origin(other)


class UpstreamClient:
    """Sends one logical request upstream, following redirects itself.

    Redirects are followed here rather than relayed so that no upstream or
    CDN Location ever reaches a client (clients may not be able to reach
    those hosts at all). Range and If-* survive every hop; credentials do not
    survive a hop to another origin; https never downgrades to http.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        agent: IAgent,
        *,
        header_timeout: float,
        max_redirects: int = MAX_REDIRECTS,
        metrics: Metrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.agent = agent
        self.header_timeout = header_timeout
        self.max_redirects = max_redirects
        self.metrics = metrics
        # The upstream's pull budget, watched and respected (service wiring).
        self.budget: PullBudget | None = None

    async def request(
        self,
        method: bytes,
        url: str,
        headers: Headers,
        body: IBodyProducer | None = None,
        follow_redirects: bool = True,
    ) -> UpstreamResponse:
        budget = self.budget
        account = budget.account_of(headers) if budget is not None else ""
        if budget is not None:
            budget.check(url, account)  # a 429 at once while Retry-After runs
        started = self.reactor.seconds()
        try:
            answer = await self._follow(method, url, headers, body, follow_redirects)
        except BaseException as e:
            if budget is not None:
                budget.failed(url, account)
            if self.metrics is not None and isinstance(e, UpstreamError):
                self.metrics.upstream_failed(url, e)
            raise
        if self.metrics is not None:
            elapsed = self.reactor.seconds() - started
            self.metrics.upstream_answered(url, answer.response, elapsed)
        if budget is not None:
            response = answer.response
            budget.observe(url, account, response.code, response.headers)
        return answer

    async def _follow(
        self,
        method: bytes,
        url: str,
        headers: Headers,
        body: IBodyProducer | None,
        follow_redirects: bool,
    ) -> UpstreamResponse:
        headers = headers.copy()
        for hop in range(self.max_redirects + 1):
            response = await self._one(method, url, headers, body)
            location = response.headers.getRawHeaders(b"location")
            if not (
                follow_redirects
                and method in (b"GET", b"HEAD")
                and response.code in REDIRECT_CODES
                and location
            ):
                return UpstreamResponse(response, url, hop)
            await discard_body(response)
            url = self._next_url(url, location[0].decode("latin-1"), headers)
        raise UpstreamError(f"more than {self.max_redirects} redirects")

    def _next_url(self, current: str, location: str, headers: Headers) -> str:
        target = urljoin(current, location.strip())
        scheme = urlsplit(target).scheme
        if scheme not in ("http", "https") or not urlsplit(target).hostname:
            raise UpstreamError("redirect to an unsupported location")
        if urlsplit(current).scheme == "https" and scheme == "http":
            raise UpstreamError("redirect from https to http refused")
        if not same_origin(target, current):
            for name in _CREDENTIAL_HEADERS:
                headers.removeHeader(name)
        return target

    async def _one(
        self,
        method: bytes,
        url: str,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> IResponse:
        d = self.agent.request(method, url.encode("ascii"), headers, body)
        # Agent reports its own cancellation as ResponseNeverReceived, so
        # Deferred.addTimeout cannot tell a timeout apart: keep a flag.
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self.reactor.callLater(self.header_timeout, expire)
        try:
            response: IResponse = await d
        except defer.CancelledError:
            if timed_out:
                raise UpstreamTimeoutError("no response headers in time") from None
            raise
        except error.TimeoutError as e:
            raise UpstreamTimeoutError("connect timed out") from e
        except error.DNSLookupError as e:
            raise UpstreamError("cannot connect: host name not found") from e
        except error.ConnectionRefusedError as e:
            raise UpstreamError("cannot connect: connection refused") from e
        except error.ConnectError as e:
            raise UpstreamError("cannot connect") from e
        except Exception as e:  # any transport or protocol failure
            if timed_out:
                raise UpstreamTimeoutError("no response headers in time") from e
            if isinstance(e, ResponseNeverReceived):
                raise UpstreamError(_describe(e)) from e
            raise UpstreamError("connection failed") from e
        finally:
            if timer.active():
                timer.cancel()
        return response


def _describe(e: ResponseNeverReceived) -> str:
    for reason in e.reasons:
        if reason.check(SSL.Error):
            return "TLS handshake with upstream failed (certificate not trusted?)"
    return "connection lost before a response"
