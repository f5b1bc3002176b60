"""The twisted.web Site and Request Docxy serves with, and its access log.

Twisted's own access log prints the full URI (query strings can carry
secrets) and only logs finished requests; Docxy logs one line per request
however it ended, with the facts an operator needs, and never credentials.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from .channel import DocxyChannel
from .errors import internal_error, write_error
from .own_tokens import is_own_token

log = Logger(namespace="docxy.access")
_errors = Logger(namespace="docxy")


class DocxyRequest(Request):
    # No default Content-Type: a blob without one must stay without one.
    defaultContentType = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: dict[str, object] = {}
        self._started = time.monotonic()

    def process(self) -> None:
        self._started = time.monotonic()
        # Docxy's own tokens grant nothing: from here on the request is
        # anonymous, and they never reach an upstream.
        values = self.requestHeaders.getRawHeaders(b"authorization", [])
        if any(is_own_token(value) for value in values):
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


def _extra(notes: dict[str, object]) -> str:
    parts = []
    if notes.get("upstream"):
        parts.append(f" upstream={notes['upstream']}")
    if notes.get("cache"):
        parts.append(f" cache={notes['cache']}")
    if notes.get("redirects"):
        parts.append(f" redirects={notes['redirects']}")
    if notes.get("upstream_error"):
        parts.append(f' upstream_error="{notes["upstream_error"]}"')
    return "".join(parts)


class DocxySite(Site):
    # Plain HTTPChannel, never the HTTP/2-capable wrapper: h2 measured 3x
    # slower than HTTP/1.1 in twisted.web, and Go clients take it if offered.
    protocol = DocxyChannel  # type: ignore[assignment]
    requestFactory = DocxyRequest
    displayTracebacks = False
    noisy = False
    # Seconds a client has to send a request head (DocxyChannel); None: no limit.
    header_timeout: float | None = None

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: HTTP/1.1 only (see ``protocol``)."""
        return [b"http/1.1"]

    def log(self, request: Any) -> None:
        """Replaced by :meth:`DocxyRequest._log_access`."""
