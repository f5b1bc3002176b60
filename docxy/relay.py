"""One upstream answer to one client, by the rules.

Everything a client receives from an upstream passes through
:meth:`Relay.answer`: status, relayed headers, rewritten challenges, a
fixed Content-Length whenever one is known, and the body through a
:class:`~docxy.streaming.BodyPump`. The proxy path and the cache's
fallbacks (a 401, a denied cached blob, a ranged miss) both use it; how a
request's failures become registry errors is :mod:`docxy.forward`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request

from .challenge import find_bearer, rewrite_challenge_header
from .headers import relayed_response_headers
from .notes import record
from .oci import Digest
from .ratelimit import rate_limited
from .streaming import BodyPump, client_gone
from .upstream_client import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    discard_body,
    same_origin,
)

if TYPE_CHECKING:
    from .routing import Mirror

log = Logger()

_CONTENT_RANGE_TOTAL = re.compile(rb"^\s*bytes\s+\d+-\d+/(\d+)\s*$", re.I)
_NO_BODY_CODES = frozenset({204, 304})


@dataclass(frozen=True)
class Reissue:
    """Whose challenges an answer carries, and the realm Docxy names instead."""

    mirror: Mirror
    realm: str
    # Translates challenge scopes into the client's naming (path aliases).
    scope_map: Callable[[str], str] | None = None


@dataclass
class Exchange:
    """What to send upstream for one client request, and how to relay it."""

    method: bytes
    url: str
    headers: Headers
    body: IBodyProducer | None = None
    # The digest a content-addressed request names (blobs, manifests by
    # digest): checks bodies whose end is only the connection closing.
    digest: str | None = None
    # Blob requests: HEAD lengths are completed, the digest header added.
    blob: bool = False
    # None: the answer's challenges are dropped, never relayed as they are.
    challenges: Reissue | None = None


class _Abandon(Protocol):
    """Closes an unwanted body's connection at once instead of reading it."""

    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


class Relay:
    """Relays upstream answers to clients, never anything else.

    It holds no per-request state and maps no errors: a failure of the
    upstream request propagates to whoever runs the request
    (:class:`~docxy.forward.Forwarder`), so the cache can fall back to the
    upstream's own answer without re-entering the proxy path.
    """

    def __init__(
        self, client: UpstreamClient, clock: IReactorTime, idle_timeout: float
    ) -> None:
        self.client = client
        self.clock = clock
        self.idle_timeout = idle_timeout

    async def relay(self, request: Request, exchange: Exchange) -> None:
        """Send ``exchange`` upstream and give the client its answer."""
        answer = await self.client.request(
            exchange.method,
            exchange.url,
            exchange.headers,
            exchange.body,
        )
        await self.answer(request, exchange, answer)

    async def answer(
        self, request: Request, exchange: Exchange, answer: UpstreamResponse
    ) -> None:
        """Give the client an upstream answer, by the rules."""
        response = answer.response
        record(request, upstream_status=response.code, redirects=answer.redirects)
        if client_gone(request):
            response.deliverBody(_Abandon())
            return
        if response.code == 429:
            # Whatever the path and whatever the body: the registry envelope
            # (docxy.forward writes it; the cache may answer instead).
            raise await rate_limited(response)
        request.setResponseCode(response.code, response.phrase)
        self._copy_headers(request, answer, exchange)
        length = await self._length(exchange, response)
        if length is not None:
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % length])
        if (
            exchange.blob
            and exchange.digest is not None
            and response.code == 200
            and not request.responseHeaders.hasHeader(b"docker-content-digest")
        ):
            request.responseHeaders.setRawHeaders(
                b"docker-content-digest", [exchange.digest.encode("ascii")]
            )
        if request.method == b"HEAD" or response.code in _NO_BODY_CODES:
            await discard_body(response)
            if not client_gone(request):
                request.finish()
            return
        verify = None
        if length is None and exchange.digest is not None and response.code == 200:
            verify = Digest.parse(exchange.digest).hasher()
        pump = BodyPump(
            request,
            self.clock,
            self.idle_timeout,
            on_end=lambda outcome: record(request, outcome=outcome, relayed=pump.bytes),
            verify=verify,
        )
        response.deliverBody(pump)

    def _copy_headers(
        self, request: Request, answer: UpstreamResponse, exchange: Exchange
    ) -> None:
        response = answer.response
        out = request.responseHeaders
        for name, values in relayed_response_headers(response.headers):
            out.setRawHeaders(name, values)
        challenges = [
            v.decode("latin-1")
            for v in response.headers.getRawHeaders(b"www-authenticate", [])
        ]
        if not challenges:
            return
        reissue = exchange.challenges
        if reissue is None:  # never relay a challenge Docxy cannot re-issue
            out.removeHeader(b"www-authenticate")
            return
        bearer = find_bearer(challenges)
        # Only the upstream itself names its realm: a redirect target's (a
        # CDN's) or a token service's challenge would send the clients'
        # credentials wherever it says.
        if bearer is not None and same_origin(answer.url, reissue.mirror.upstream.url):
            reissue.mirror.realms.observe(bearer)
        out.setRawHeaders(
            b"www-authenticate",
            [
                rewrite_challenge_header(v, reissue.realm, reissue.scope_map).encode(
                    "latin-1"
                )
                for v in challenges
            ],
        )

    async def _length(self, exchange: Exchange, response: IResponse) -> int | None:
        """The Content-Length the client must see, if it can be known."""
        if exchange.method != b"HEAD":
            if response.code in _NO_BODY_CODES or response.length is UNKNOWN_LENGTH:
                return None
            return int(response.length)
        declared = _int_header(response.headers, b"content-length")
        if exchange.blob and response.code == 200 and not declared:
            probed = await self._probe_blob_length(exchange)
            if probed is not None:
                return probed
        return declared

    async def _probe_blob_length(self, exchange: Exchange) -> int | None:
        """Some CDNs answer HEAD without a length: ask for one byte instead."""
        headers = exchange.headers.copy()
        headers.setRawHeaders(b"range", [b"bytes=0-0"])
        for name in (b"if-range", b"if-match", b"if-none-match"):
            headers.removeHeader(name)
        try:
            answer = await self.client.request(b"GET", exchange.url, headers)
        except UpstreamError as e:
            log.info("blob length probe failed: {why}", why=str(e))
            return None
        response = answer.response
        if response.code == 206:
            await discard_body(response)
            value = (response.headers.getRawHeaders(b"content-range") or [b""])[0]
            match = _CONTENT_RANGE_TOTAL.match(value)
            return int(match.group(1)) if match else None
        length = response.length
        response.deliverBody(_Abandon())
        if response.code == 200 and length is not UNKNOWN_LENGTH:
            return int(length)
        return None


def _int_header(headers: Headers, name: bytes) -> int | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None
