"""What orchestrators and monitoring ask: /ready, /metrics, and their listener.

``/health`` (liveness, in :mod:`docxy.resources`) only says the process
answers. ``/ready`` says whether traffic should be sent here: not while the
cache directory is unusable (deleted, unmounted, read-only) and not once
shutdown began, so a load balancer stops routing new pulls while the
transfers in flight finish. ``/metrics`` is the Prometheus text format; it
is served on its own ``--metrics-port`` listener only, never on the
mirror's public ports.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .errors import unsupported_method, write_error
from .metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from .cache.disk_health import DiskHealth

READ_METHODS = (b"GET", b"HEAD")


class Readiness:
    """Ready unless shutting down or the cache directory does not take writes.

    The cache's own :class:`~docxy.cache.disk_health.DiskHealth` decides
    (full, read-only, unwritable): while it says no, pulls still work,
    uncached, but this instance should not take new traffic.
    """

    def __init__(self, health: DiskHealth | None = None) -> None:
        self.health = health
        self.draining = False

    def problem(self) -> str | None:
        """Why Docxy is not ready, or None. A statvfs per ask: cheap enough."""
        if self.draining:
            return "shutting down"
        if self.health is not None and not self.health.writable():
            trouble = self.health.trouble
            why = (trouble.strerror or str(trouble)) if trouble else "unknown"
            return f"cache directory unusable: {self.health.root}: {why}"
        return None


def _refuse_writes(request: Request) -> bool:
    if request.method in READ_METHODS:
        return False
    write_error(request, unsupported_method(request.method.decode(), READ_METHODS))
    return True


class ReadyResource(Resource):
    """200 ``{"status": "ready"}`` or 503 with the reason."""

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def render(self, request: Request) -> bytes | int:
        if _refuse_writes(request):
            return NOT_DONE_YET
        return answer_ready(request, self.readiness.problem())


def answer_ready(request: Request, problem: str | None) -> bytes:
    """The /ready answer for ``problem`` (None: ready), one process or many."""
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    if problem is None:
        return json.dumps({"status": "ready"}).encode()
    request.setResponseCode(503)
    return json.dumps({"status": "not ready", "reason": problem}).encode()


def reason_of(body: bytes) -> str:
    """The ``reason`` of a /ready answer (or its text, if it is no JSON)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    reason = answer.get("reason") if isinstance(answer, dict) else None
    if isinstance(reason, str):
        return reason
    return body.decode("utf-8", "replace").strip() or "no answer"


class MetricsResource(Resource):
    """The Prometheus text of :class:`~docxy.metrics.Metrics`, for reads only.

    Mounted on the metrics listener alone, so the mirror's public ports
    never show what it serves.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render(self, request: Request) -> bytes | int:
        if _refuse_writes(request):
            return NOT_DONE_YET
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()


class QuietSite(Site):
    """No access line per scrape or probe (every few seconds, forever)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: object) -> None:
        pass


def probes_site(metrics: Metrics, readiness: Readiness, health: Resource) -> Site:
    """The ``--metrics-port`` listener: /metrics, /health, /ready."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"health", health)
    root.putChild(b"ready", ReadyResource(readiness))
    return QuietSite(root)
