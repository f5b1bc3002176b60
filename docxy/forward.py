"""Running one client request's work, and answering its failures.

Every request that talks to an upstream runs through :meth:`Forwarder.run`:
failures become registry errors (502, 504, 500), a client that leaves
cancels the work, and what went wrong is noted for the access log. The
answers themselves come from :class:`~docxy.relay.Relay`.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from .errors import (
    RegistryError,
    internal_error,
    upstream_timeout,
    upstream_unavailable,
    write_error,
)
from .notes import record
from .ratelimit import RateLimitedError
from .relay import Exchange, Relay
from .streaming import abort_client
from .upstream_client import UpstreamError, UpstreamTimeoutError

log = Logger()


class Forwarder:
    """Runs the work of one client request: the one place its failures are answered.

    Resources hand their work here and return ``NOT_DONE_YET``: an upstream
    that cannot be reached becomes a 502, one too slow a 504, a bug a 500
    (or a cut connection once the body started), and a client that leaves
    cancels the work. What reaches the client from an upstream is the
    :class:`~docxy.relay.Relay`'s job.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def forward(self, request: Request, exchange: Exchange) -> None:
        """Relay ``exchange`` for ``request``; the caller returns NOT_DONE_YET."""
        self.run(request, self.relay.relay(request, exchange))

    def run(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` for ``request``, answering its failures as registry errors."""
        d = defer.Deferred.fromCoroutine(work)
        # A client that leaves before upstream answered cancels the request.
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._failed, request)

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(defer.CancelledError):
            return
        if isinstance(failure.value, RateLimitedError):
            record(request, upstream_error="429")
            write_error(request, failure.value.envelope())
        elif failure.check(UpstreamTimeoutError):
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
