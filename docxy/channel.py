"""What Docxy accepts from a client connection before any Resource sees it.

twisted.web reads a whole request body into memory or a temporary file
before ``render``, holds a connection forever while its headers trickle in
a byte at a time, and closes without a word on an over-long line. A mirror
on a node's network meets all of that, so the channel decides first:

- a body is accepted only where Docxy reads one (a token request's form,
  at most :data:`~docxy.tokens.MAX_TOKEN_FORM`); any other is refused as
  soon as the headers are in (405, or 413 for GET/HEAD), unread;
- the request head must be complete within ``header_timeout`` (408), like
  nginx's ``client_header_timeout``;
- an over-long request line gets 414, over-long or too many headers 431;
- a connection beyond :func:`~docxy.capacity.client_capacity` gets 503;
- a TLS handshake on a plain port gets an immediate 400: containers/image
  clients (podman, skopeo, CRI-O) with an ``insecure`` mirror try https
  first and fall back to http at once instead of after a 10 s timeout.

Every refusal is a registry error envelope with ``Connection: close``. The
connection then stops sending and discards what the client still sends for
a short while (a "lingering close", as nginx does): closing at once with
unread data would reset the connection, and the client might lose the
answer.
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel

from .capacity import client_capacity
from .errors import API_VERSION, API_VERSION_HEADER, RegistryError, unsupported_method
from .tokens import MAX_TOKEN_FORM, TOKEN_METHODS

access = Logger(namespace="docxy.access")

MAX_LINE = 16 * 1024  # the request line, and each header line
MAX_HEAD = 64 * 1024  # request line and all headers together
MAX_HEADERS = 200
LINGER_IDLE = 5.0  # after a refusal: close once the client pauses this long
LINGER_TOTAL = 30.0  # ... and at the latest after this long
# Chunked token forms: the chunk framing on top of the form itself.
_CHUNK_SLACK = 4 * 1024
_TOKEN_PATH = re.compile(rb"^/auth/(?:[^/?]+/)?token/?(?:\?.*)?$")
_READ_METHODS = (b"GET", b"HEAD")
_TLS_HANDSHAKE = b"\x16"


def _refusal(error: RegistryError) -> bytes:
    body = error.body()
    phrase = RESPONSES.get(error.status, b"Error")
    head = [
        b"HTTP/1.1 %d %s" % (error.status, phrase),
        b"Content-Type: application/json",
        API_VERSION_HEADER + b": " + API_VERSION,
        *(name + b": " + value for name, value in error.headers),
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _too_large_head(what: str) -> RegistryError:
    return RegistryError(
        431,
        "UNSUPPORTED",
        "request header fields too large",
        {"limit": what},
    )


def _too_many_connections() -> RegistryError:
    return RegistryError(
        503,
        "UNAVAILABLE",
        "too many client connections; try again",
        {"limit": client_capacity()},
        headers=((b"Retry-After", b"1"),),
    )


class DocxyChannel(HTTPChannel):
    """HTTP/1.1 with limits on what a client may send (see the module)."""

    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEAD
    maxHeaders = MAX_HEADERS
    # Set from the site (DocxySite.header_timeout); None: no limit.
    header_timeout: float | None = None

    _first_bytes = True
    _refused = False
    _awaiting_request_line = True
    _head_timer: IDelayedCall | None = None
    _head_bytes = 0
    _linger_idle: IDelayedCall | None = None
    _linger_total: IDelayedCall | None = None
    _body_budget: int | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.header_timeout = getattr(self.factory, "header_timeout", None)
        if hasattr(self.factory, "channel_opened"):  # graceful shutdown
            self.factory.channel_opened(self)
        channels = getattr(self.factory, "channels", None)
        if channels is not None and len(channels) > client_capacity():
            self._refuse(_too_many_connections(), b"-")
            return
        self._start_head_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._discard()
            return
        if self._first_bytes and data:
            self._first_bytes = False
            if data[:1] == _TLS_HANDSHAKE:
                # All of the hello is read: nothing to linger for.
                self._refuse(
                    RegistryError(400, "UNSUPPORTED", "this port speaks plain HTTP"),
                    b"-",
                    linger=False,
                )
                return
        if not self._handlingRequest:
            self._head_bytes += len(data)
            if self._head_timer is None and self._awaiting_request_line:
                self._start_head_timer()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_request_line:
            if line:
                self._awaiting_request_line = False
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(_too_large_head(f"{self.totalHeadersSize} bytes"))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._awaiting_request_line:
            error = RegistryError(
                414, "UNSUPPORTED", "request line too long", {"limit": MAX_LINE}
            )
            self._refuse(error, b"-")
        else:
            self._refuse(_too_large_head(f"{MAX_LINE} bytes per line"))

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(_too_large_head(f"{self.maxHeaders} headers"))
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def allHeadersReceived(self) -> None:
        error = self._body_refusal()
        if error is not None:
            self._refuse(error)
            return
        super().allHeadersReceived()

    def _body_refusal(self) -> RegistryError | None:
        """Why this request's body is not read, or None if it may be."""
        self._body_budget = None
        if self.length == 0:
            return None
        method, path = self._command, self._path
        token = _TOKEN_PATH.match(path) is not None
        if token and method == b"POST":
            if self.length is None:  # chunked: counted as it comes
                self._body_budget = MAX_TOKEN_FORM + _CHUNK_SLACK
                return None
            if self.length <= MAX_TOKEN_FORM:
                return None
            return RegistryError(
                413,
                "SIZE_INVALID",
                "token request too large",
                {"limit": MAX_TOKEN_FORM},
            )
        if method in _READ_METHODS:
            return RegistryError(
                413,
                "SIZE_INVALID",
                f"a {method.decode()} request has no body here",
                {"limit": 0},
            )
        allowed = TOKEN_METHODS if token else _READ_METHODS
        return unsupported_method(method.decode("latin-1"), allowed)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._body_budget is not None and not self._handlingRequest:
            self._body_budget -= len(data)
            if self._body_budget < 0:
                self._refuse(
                    RegistryError(
                        413,
                        "SIZE_INVALID",
                        "token request too large",
                        {"limit": MAX_TOKEN_FORM},
                    )
                )
                # Its body so far (a temporary file) is never read now.
                content = getattr(self.requests[-1], "content", None)
                if content is not None:
                    content.close()
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        self._body_budget = None
        # Before super(): it may answer, and replay pipelined requests, at once.
        self._awaiting_request_line = True
        self._head_bytes = 0
        super().allContentReceived()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._stop_head_timer()
        for call in (self._linger_idle, self._linger_total):
            if call is not None and call.active():
                call.cancel()
        super().connectionLost(reason)
        if hasattr(self.factory, "channel_closed"):
            self.factory.channel_closed(self)

    # -- the request-head timer ----------------------------------------------

    def _start_head_timer(self) -> None:
        if self.header_timeout is not None:
            self._head_timer = self.callLater(self.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0 and self._awaiting_request_line:
            # Connected and said nothing: nothing to answer.
            self.loseConnection()
            return
        self._refuse(
            RegistryError(
                408,
                "UNKNOWN",
                "request not complete in time",
                {"timeout": self.header_timeout},
            )
        )

    # -- refusing --------------------------------------------------------------

    def _refuse(
        self, error: RegistryError, method: bytes | None = None, linger: bool = True
    ) -> None:
        """Answer ``error``, stop reading requests, close (lingering)."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._stop_head_timer()
        self.setTimeout(None)
        answer = _refusal(error)
        self.transport.write(answer)
        self._log_refusal(error, method, len(answer))
        # Half-close only plain TCP: TLS has no half-close of its own.
        tcp = ITCPTransport(self.transport, None)
        if not linger or tcp is None or ISSLTransport.providedBy(self.transport):
            self.loseConnection()
            return
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        tcp.loseWriteConnection()
        self._linger_idle = self.callLater(LINGER_IDLE, self._linger_over)
        self._linger_total = self.callLater(LINGER_TOTAL, self._linger_over)

    def _discard(self) -> None:
        """Bytes after a refusal: dropped, and the linger goes on a little."""
        if self._linger_idle is not None and self._linger_idle.active():
            self._linger_idle.reset(LINGER_IDLE)

    def _linger_over(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _log_refusal(
        self, error: RegistryError, method: bytes | None, size: int
    ) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        if method is None:
            method = getattr(self, "_command", b"-")
        path = getattr(self, "_path", b"-").split(b"?", 1)[0]
        access.info(
            "{client} method={method} path={path} status={status} bytes={bytes} "
            "duration={duration:.3f} upstream_status=- outcome=refused",
            client=getattr(peer, "host", "-"),
            method=method.decode("latin-1")[:32] or "-",
            path=path.decode("latin-1")[:512] or "-",
            status=error.status,
            bytes=size,
            duration=0.0,
        )
