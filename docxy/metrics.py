"""What Docxy counts, in Prometheus objects, in one registry per service.

One :class:`Metrics` per Docxy: the request path reports to it with a few
calls (an answered request, an upstream answer or failure), the cache's
counters and store are read at scrape time by :class:`CacheCollector`.
A per-service ``CollectorRegistry`` (never the process-global one) keeps
several Docxys in one process (tests) apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.iweb import IResponse

from .upstream_client import UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from .cache.pullthrough import PullThroughCache

# No *_created series: start times of label sets are noise on every scrape.
disable_created_metrics()

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Seconds to an upstream's response headers (redirects followed).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# First path segment -> route label, for requests no resource labelled.
_ROUTES = {
    "auth": "token",
    "health": "health",
    "ready": "ready",
    "metrics": "metrics",
    ".well-known": "acme",
}
# The method label: a client may send any token as its method, and every
# label value is a series kept for good, so the others count as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Docxy's counters, gauges and histograms, in their own registry."""

    def __init__(self, upstream_urls: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # (host, port) -> upstream name: labels stay the configured names.
        self._names = {
            _origin(url): name for name, url in (upstream_urls or {}).items()
        }
        r = self.registry
        self.requests = Counter(
            "docxy_requests",
            "Requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.response_bytes = Counter(
            "docxy_response_bytes",
            "Body bytes sent to clients, by route.",
            ["route"],
            registry=r,
        )
        self.relayed_bytes = Counter(
            "docxy_upstream_relayed_bytes",
            "Body bytes relayed from upstreams to clients without the cache "
            "(fills are docxy_cache_upstream_bytes).",
            registry=r,
        )
        self.in_flight = Gauge(
            "docxy_requests_in_flight", "Requests being answered.", registry=r
        )
        self.upstream_latency = Histogram(
            "docxy_upstream_response_seconds",
            "Seconds from sending an upstream request to its response headers.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "docxy_upstream_errors",
            "Upstream requests that failed, or answered 429 or 5xx, by kind.",
            ["upstream", "kind"],
            registry=r,
        )
        # Set by docxy.pull_budget: "account" is Docxy's upstream account,
        # "anonymous", or "client" (a client's own credentials).
        self.ratelimit_remaining = Gauge(
            "docxy_upstream_ratelimit_remaining",
            "Pulls left, from the upstream's last RateLimit-Remaining header.",
            ["upstream", "account"],
            registry=r,
        )
        self.ratelimit_limit = Gauge(
            "docxy_upstream_ratelimit_limit",
            "Pull limit, from the upstream's last RateLimit-Limit header.",
            ["upstream", "account"],
            registry=r,
        )

    def name_like(self, url: str, upstream_url: str) -> None:
        """Label ``url``'s host (a token realm) as the upstream of ``upstream_url``."""
        origin = _origin(url)
        if origin not in self._names:
            self._names[origin] = self.upstream_name(upstream_url)

    def upstream_name(self, url: str) -> str:
        """The configured name of the upstream ``url`` belongs to, else its host.

        Only configured upstreams and their realms are ever asked first, so
        the label set stays bounded.
        """
        origin = _origin(url)
        return self._names.get(origin, origin[0])

    # --- the request path's calls -------------------------------------------

    def answered(self, route: str, method: str, status: int, sent: int) -> None:
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.response_bytes.labels(route).inc(sent)

    def upstream_answered(self, url: str, response: IResponse, seconds: float) -> None:
        name = self.upstream_name(url)
        self.upstream_latency.labels(name).observe(seconds)
        code = response.code
        if code == 429 or code >= 500:
            kind = "rate-limited" if code == 429 else "status-5xx"
            self.upstream_errors.labels(name, kind).inc()

    def upstream_failed(self, url: str, error: UpstreamError) -> None:
        self.upstream_errors.labels(self.upstream_name(url), error_kind(error)).inc()

    def watch_cache(self, cache: PullThroughCache) -> None:
        self.registry.register(CacheCollector(cache))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def error_kind(error: UpstreamError) -> str:
    """A short, bounded label for why an upstream request failed."""
    if isinstance(error, UpstreamTimeoutError):
        return "timeout"
    message = str(error)
    if message.startswith("cannot connect"):
        return "connect"
    if "TLS" in message:
        return "tls"
    if "redirect" in message:
        return "redirect"
    return "connection"


def route_of(path: bytes, notes: Mapping[str, object]) -> str:
    route = notes.get("route")
    if isinstance(route, str):
        return route
    first = path.split(b"/", 2)[1:2]
    segment = first[0].decode("latin-1") if first else ""
    if segment in _ROUTES:
        return _ROUTES[segment]
    return "registry" if b"/v2" in path else "other"


class CacheCollector(Collector):
    """Reads the cache's counters, store and fills at scrape time."""

    _COUNTERS = (
        ("hits", "Requests answered from the cache."),
        ("misses", "Requests that started a fill (or passed a ranged miss)."),
        (
            "joined_fills",
            "Requests that joined another request's upstream fetch in flight "
            "(a blob fill, a manifest GET).",
        ),
        ("kernel_fills", "Fills whose body went socket to file in the kernel."),
        ("evictions", "Blobs evicted to stay under cache-max-size."),
        ("stale_serves", "Cached content served on old evidence, upstream down."),
        ("digest_mismatches", "Bodies (upstream or on disk) that failed their digest."),
        ("denied", "Cached content the upstream would not give this client."),
        ("bytes_served", "Blob bytes sent to clients from the cache."),
        ("bytes_from_upstream", "Blob bytes fetched upstream by fills."),
    )

    def __init__(self, cache: PullThroughCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.cache.counters.snapshot()
        for name, help_text in self._COUNTERS:
            family = "docxy_cache_" + _COUNTER_NAMES.get(name, name)
            yield CounterMetricFamily(family, help_text, value=counts[name])
        store = self.cache.blobs.store
        yield from _gauges(
            (
                (
                    "docxy_cache_fills_in_flight",
                    "Fills running.",
                    len(self.cache.blobs.fills),
                ),
                ("docxy_cache_blobs", "Blobs in the cache.", len(store.entries)),
                ("docxy_cache_size_bytes", "Bytes of cached blobs.", store.total),
                ("docxy_cache_max_size_bytes", "The cache's bound.", store.max_size),
            )
        )


_COUNTER_NAMES = {
    "joined_fills": "joins",
    "bytes_from_upstream": "upstream_bytes",
    "bytes_served": "served_bytes",
}


def _gauges(
    rows: Iterable[tuple[str, str, int]],
) -> Iterator[GaugeMetricFamily]:
    for name, help_text, value in rows:
        yield GaugeMetricFamily(name, help_text, value=value)


def _origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return ((parts.hostname or "").lower(), parts.port or default)
