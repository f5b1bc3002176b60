"""The twisted.web Site and Request Docxy serves with, and its access log.

Twisted's own access log prints the full URI (query strings can carry
secrets) and only logs finished requests; Docxy logs one line per request
however it ended, with the facts an operator needs, and never credentials.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from .channel import DocxyChannel
from .errors import internal_error, write_error
from .metrics import Metrics, route_of
from .own_tokens import is_own_token

if TYPE_CHECKING:
    from .cache.pullthrough import PullThroughCache
    from .probes import Readiness

log = Logger(namespace="docxy.access")
_errors = Logger(namespace="docxy")


class DocxyRequest(Request):
    """A request that carries notes for its one access-log line.

    Without a default Content-Type, so a blob the upstream sent without one
    is relayed without one.
    """

    # No default Content-Type: a blob without one must stay without one.
    defaultContentType = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: dict[str, object] = {}
        self.own_token: bytes | None = None
        self._started = time.monotonic()

    def process(self) -> None:
        self._started = time.monotonic()
        site = getattr(self.channel, "site", None)
        if isinstance(site, DocxySite):
            site.begun(self)
            self.notifyFinish().addBoth(lambda _: site.ended(self))
        # Docxy's own tokens grant nothing: from here on the request is
        # anonymous, and they never reach an upstream.
        values = self.requestHeaders.getRawHeaders(b"authorization", [])
        own = [value for value in values if is_own_token(value)]
        if own:
            self.own_token = own[0]  # for the cache: an offline token says who
            self.requestHeaders.removeHeader(b"authorization")
        self.notifyFinish().addBoth(self._log_access)
        super().process()

    def processingFailed(self, reason: Failure) -> None:
        _errors.failure("unhandled error serving {path}", reason, path=self.path)
        if not self.startedWriting:
            write_error(self, internal_error())
        else:
            self.loseConnection()

    def _log_access(self, result: object) -> None:
        outcome = self.notes.get("outcome")
        if outcome is None:
            outcome = "aborted" if isinstance(result, Failure) else "done"
        ns, agent = _client_facts(self)
        # The channel is gone by now; Request.process kept its site.
        metrics = getattr(getattr(self, "site", None), "metrics", None)
        if metrics is not None:
            route = route_of(self.path, self.notes)
            metrics.answered(
                route, self.method.decode("latin-1"), self.code, self.sentLength
            )
            relayed = self.notes.get("relayed")
            if isinstance(relayed, int):
                metrics.relayed_bytes.inc(relayed)
        log.info(
            "{client} method={method} path={path} status={status} bytes={bytes} "
            "duration={duration:.3f} upstream_status={upstream_status} "
            "outcome={outcome}{extra}",
            client=self.getClientAddress().host
            if hasattr(self.getClientAddress(), "host")
            else "-",
            method=self.method.decode("latin-1"),
            path=self.path.decode("latin-1")[:512],
            status=self.code,
            bytes=self.sentLength,
            duration=time.monotonic() - self._started,
            upstream_status=self.notes.get("upstream_status", "-"),
            outcome=outcome,
            # Also as fields of their own, for structured (JSON) logs.
            upstream=self.notes.get("upstream"),
            ns=ns,
            user_agent=agent,
            cache=self.notes.get("cache"),
            redirects=self.notes.get("redirects"),
            upstream_error=self.notes.get("upstream_error"),
            account=self.notes.get("account"),
            forwarded_for=self.notes.get("forwarded_for"),
            extra=_extra(self.notes) + _quoted(ns=ns, ua=agent),
        )


def _client_facts(request: Request) -> tuple[str | None, str | None]:
    """The ``ns`` the client gave and its User-Agent (never credentials)."""
    ns = (request.args or {}).get(b"ns")
    agent = request.getHeader(b"user-agent")
    return (
        _printable(ns[0]) if ns else None,
        _printable(agent) if agent else None,
    )


def _quoted(**values: str | None) -> str:
    return "".join(f' {k}="{v}"' for k, v in values.items() if v is not None)


def _printable(value: bytes, limit: int = 200) -> str:
    """A client-sent value made safe for one log line: no quotes, no controls."""
    text = value[:limit].decode("latin-1")
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)


# Access-log fields from the request's notes, in this order, when set.
# forwarded_for: the client a trusted proxy named (X-Forwarded-For); the
# first field stays the TCP peer. account: a mirror account
# (docxy.access_control), never a credential.
_NOTED = ("upstream", "cache", "redirects", "forwarded_for", "account")


def _extra(notes: dict[str, object]) -> str:
    parts = [f" {name}={notes[name]}" for name in _NOTED if notes.get(name)]
    if notes.get("upstream_error"):
        parts.append(f' upstream_error="{notes["upstream_error"]}"')
    return "".join(parts)


class DocxySite(Site):
    """Docxy's Site: its own channel (client limits) and its own access log.

    Twisted's log would print full URIs, whose query strings can carry
    secrets, and only finished requests.
    """

    # Plain HTTPChannel, never the HTTP/2-capable wrapper: h2 measured 3x
    # slower than HTTP/1.1 in twisted.web, and Go clients take it if offered.
    protocol = DocxyChannel  # type: ignore[assignment]
    requestFactory = DocxyRequest
    displayTracebacks = False
    noisy = False
    # Seconds a client has to send a request head (DocxyChannel); None: no limit.
    header_timeout: float | None = None

    def __init__(
        self, resource: Any, *args: Any, metrics: Metrics | None = None, **kwargs: Any
    ) -> None:
        super().__init__(resource, *args, **kwargs)
        self.metrics = metrics
        self.readiness: Readiness | None = None
        self.cache: PullThroughCache | None = None
        self.active: set[Request] = set()
        self._idle: list[Deferred[None]] = []
        self.channels: set[Any] = set()
        self._closed: list[Deferred[None]] = []

    def channel_opened(self, channel: Any) -> None:
        self.channels.add(channel)

    def channel_closed(self, channel: Any) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def close_connections(self) -> Deferred[None]:
        """Close every client connection once its buffered bytes are sent.

        ``loseConnection`` flushes first: an answer that finished (its last
        bytes still in the write buffer) reaches its client whole.
        """
        d: Deferred[None] = Deferred()
        if not self.channels:
            d.callback(None)
            return d
        self._closed.append(d)
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.loseConnection()
        return d

    def begun(self, request: Request) -> None:
        if self.readiness is not None and self.readiness.draining:
            # Shutting down: this answer is the connection's last.
            request.channel.persistent = False
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self.active.add(request)
        if self.metrics is not None:
            self.metrics.in_flight.inc()

    def ended(self, request: Request) -> None:
        if request in self.active:
            self.active.discard(request)
            if self.metrics is not None:
                self.metrics.in_flight.dec()
        if not self.active:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once no request is being answered (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.active:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: HTTP/1.1 only (see ``protocol``)."""
        return [b"http/1.1"]

    def log(self, request: Any) -> None:
        """Replaced by :meth:`DocxyRequest._log_access`."""
