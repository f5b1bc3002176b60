"""One proxied exchange: ask upstream, then answer the client by the rules.

Everything a client receives from an upstream passes through
:meth:`Forwarder.forward`: status, relayed headers, rewritten challenges,
a fixed Content-Length whenever one is known, and the body through a
:class:`~docxy.streaming.BodyPump`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request

from .challenge import find_bearer, rewrite_challenge_header
from .errors import (
    RegistryError,
    internal_error,
    upstream_timeout,
    upstream_unavailable,
    write_error,
)
from .headers import relayed_response_headers
from .oci import Digest
from .streaming import BodyPump, abort_client, client_gone
from .upstream_client import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
    discard_body,
)

if TYPE_CHECKING:
    from .routing import Mirror

log = Logger()

_CONTENT_RANGE_TOTAL = re.compile(rb"^\s*bytes\s+\d+-\d+/(\d+)\s*$", re.I)
_NO_BODY_CODES = frozenset({204, 304})


@dataclass
class Exchange:
    """What to send upstream for one client request."""

    method: bytes
    url: str
    headers: Headers
    body: IBodyProducer | None = None
    follow_redirects: bool = True
    # The digest a content-addressed request names (blobs, manifests by
    # digest): checks bodies whose end is only the connection closing.
    digest: str | None = None
    # Blob requests: HEAD lengths are completed, the digest header added.
    blob: bool = False
    # Whose challenges these are: their realm is replaced by Docxy's for it.
    mirror: Mirror | None = None
    # /v2/ itself: challenges name the mirror's ping realm.
    ping: bool = False
    # Translates challenge scopes into the client's naming (path aliases).
    scope_map: Callable[[str], str] | None = None


class _Abandon(Protocol):
    """Closes an unwanted body's connection at once instead of reading it."""

    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


def record(request: Request, **fields: object) -> None:
    """Note facts about the request for its access-log line."""
    notes = getattr(request, "notes", None)
    if isinstance(notes, dict):
        notes.update(fields)


class Forwarder:
    def __init__(
        self, client: UpstreamClient, clock: IReactorTime, idle_timeout: float
    ) -> None:
        self.client = client
        self.clock = clock
        self.idle_timeout = idle_timeout

    def forward(self, request: Request, exchange: Exchange) -> None:
        """Relay ``exchange`` for ``request``; the caller returns NOT_DONE_YET."""
        self.run(request, self.relay(request, exchange))

    def run(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` for ``request``, answering its failures as registry errors."""
        d = defer.Deferred.fromCoroutine(work)
        # A client that leaves before upstream answered cancels the request.
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._failed, request)

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(defer.CancelledError):
            return
        if failure.check(UpstreamTimeoutError):
            record(request, upstream_error="timeout")
            write_error(request, upstream_timeout())
        elif failure.check(UpstreamError):
            reason = failure.getErrorMessage()
            record(request, upstream_error=reason)
            write_error(request, upstream_unavailable(reason))
        elif isinstance(failure.value, RegistryError):
            write_error(request, failure.value)
        else:
            log.failure("proxying {path} failed", failure, path=request.path)
            if request.startedWriting:
                abort_client(request)
            else:
                write_error(request, internal_error())

    async def relay(self, request: Request, exchange: Exchange) -> None:
        answer = await self.client.request(
            exchange.method,
            exchange.url,
            exchange.headers,
            exchange.body,
            follow_redirects=exchange.follow_redirects,
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
        request.setResponseCode(response.code, response.phrase)
        self._copy_headers(request, response, exchange)
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
            on_end=lambda outcome: record(request, outcome=outcome),
            verify=verify,
        )
        response.deliverBody(pump)

    def _copy_headers(
        self, request: Request, response: IResponse, exchange: Exchange
    ) -> None:
        out = request.responseHeaders
        for name, values in relayed_response_headers(response.headers):
            out.setRawHeaders(name, values)
        challenges = [
            v.decode("latin-1")
            for v in response.headers.getRawHeaders(b"www-authenticate", [])
        ]
        if not challenges:
            return
        mirror = exchange.mirror
        if mirror is None:  # never relay a challenge Docxy cannot re-issue
            out.removeHeader(b"www-authenticate")
            return
        bearer = find_bearer(challenges)
        if bearer is not None:
            mirror.realms.observe(bearer)
        out.setRawHeaders(
            b"www-authenticate",
            [
                rewrite_challenge_header(
                    v,
                    mirror.ping_realm if exchange.ping else mirror.public_realm,
                    exchange.scope_map,
                ).encode("latin-1")
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
