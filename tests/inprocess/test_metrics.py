"""Metrics of upstream answers: rate-limit gauges, error kinds, latency, routes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.web.server import Request

from docxy.metrics import Metrics, route_of
from tests.support.metrics import Samples, samples_of

from .harness import FakeUpstream, Harness, start

MANIFEST = b'{"schemaVersion":2}'


def samples(metrics: Metrics) -> Samples:
    """(sample name, sorted labels) -> value, from the rendered text format."""
    return samples_of(metrics.render().decode())


@pytest_twisted.async_yield_fixture
async def docxy() -> AsyncIterator[Harness]:
    """A plain-proxy Docxy; its scripted upstream is ``docxy.upstream``."""
    harness = await start(FakeUpstream())
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_docker_hub_rate_limit_headers_become_gauges(
    docxy: Harness,
) -> None:
    upstream = docxy.upstream
    remaining = iter([b"76;w=21600", b"75;w=21600"])

    def manifest(request: Request) -> bytes:
        request.setHeader(b"ratelimit-limit", b"100;w=21600")
        request.setHeader(b"ratelimit-remaining", next(remaining))
        request.setHeader(
            b"content-type", b"application/vnd.oci.image.manifest.v1+json"
        )
        return MANIFEST

    upstream.routes[b"/v2/library/alpine/manifests/3"] = manifest
    name = docxy.site.metrics.upstream_name(upstream.url)
    for expected in (76.0, 75.0):
        reply = await docxy.request(b"GET", "/v2/alpine/manifests/3")
        assert reply.code == 200
        found = samples(docxy.site.metrics)
        budget = (("account", "anonymous"), ("upstream", name))
        assert found[("docxy_upstream_ratelimit_remaining", budget)] == expected
        assert found[("docxy_upstream_ratelimit_limit", budget)] == 100.0
    found = samples(docxy.site.metrics)
    key = (("upstream", name),)
    assert found[("docxy_upstream_response_seconds_count", key)] == 2.0
    assert (
        found[
            (
                "docxy_requests_total",
                (("method", "GET"), ("route", "manifests"), ("status", "200")),
            )
        ]
        == 2.0
    )
    assert found[("docxy_response_bytes_total", (("route", "manifests"),))] == 2 * len(
        MANIFEST
    )
    assert found[("docxy_upstream_relayed_bytes_total", ())] == 2 * len(MANIFEST)


@pytest_twisted.ensureDeferred
async def test_upstream_errors_are_counted_by_kind(
    docxy: Harness,
) -> None:
    upstream = docxy.upstream

    def busy(request: Request) -> bytes:
        request.setResponseCode(503)
        return b"{}"

    def limited(request: Request) -> bytes:
        request.setResponseCode(429)
        return b"{}"

    upstream.routes[b"/v2/library/a/manifests/1"] = busy
    upstream.routes[b"/v2/library/b/manifests/1"] = limited
    await docxy.request(b"GET", "/v2/a/manifests/1")
    await docxy.request(b"GET", "/v2/b/manifests/1")
    await docxy.request(b"GET", "/v2/b/manifests/1")
    name = docxy.site.metrics.upstream_name(upstream.url)
    found = samples(docxy.site.metrics)
    # The second 429 is Docxy's own: the upstream is not asked again while
    # its Retry-After runs (docxy.pull_budget).
    for kind, count in (("status-5xx", 1.0), ("rate-limited", 1.0)):
        key = ("docxy_upstream_errors_total", (("kind", kind), ("upstream", name)))
        assert found[key] == count, kind


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens after
    harness = await start(FakeUpstream(), {"upstream": closed})
    try:
        reply = await harness.request(b"GET", "/v2/c/manifests/1")
        assert reply.code == 502
        name = harness.site.metrics.upstream_name(closed)
        assert name == "docker.io"  # the configured name, not the host
        key = (("kind", "connect"), ("upstream", name))
        assert samples(harness.site.metrics)[("docxy_upstream_errors_total", key)] == 1
    finally:
        await harness.stop()


def test_separate_registries_do_not_share_counts() -> None:
    one, two = Metrics(), Metrics()
    one.answered("blobs", "GET", 200, 10)
    assert (
        "docxy_requests_total",
        (("method", "GET"), ("route", "blobs"), ("status", "200")),
    ) in samples(one)
    assert not any(name == "docxy_requests_total" for name, _ in samples(two))


@pytest.mark.parametrize(
    ("path", "notes", "route"),
    [
        (b"/v2/x/blobs/sha256:1", {"route": "blobs"}, "blobs"),
        (b"/auth/token", {}, "token"),
        (b"/auth/ghcr.io/token", {}, "token"),
        (b"/health", {}, "health"),
        (b"/ready", {}, "ready"),
        (b"/v2/BAD/manifests/x", {}, "registry"),
        (b"/ghcr/v2/", {}, "registry"),
        (b"/favicon.ico", {}, "other"),
    ],
)
def test_route_labels(path: bytes, notes: dict[str, object], route: str) -> None:
    assert route_of(path, notes) == route


def test_upstream_labels_are_configured_names() -> None:
    metrics = Metrics({"docker.io": "https://registry-1.docker.io"})
    assert metrics.upstream_name("https://registry-1.docker.io/v2/x") == "docker.io"
    assert metrics.upstream_name("https://auth.docker.io/token?x") == "auth.docker.io"


@pytest_twisted.ensureDeferred
async def test_a_client_invented_method_is_not_a_label_of_its_own(
    docxy: Harness,
) -> None:
    # Every distinct label value is a series kept forever: a client sending
    # made-up methods must not grow the registry (or the scrape) at will.
    for method in (b"XYZ1", b"XYZ2", b"A" * 1000):
        reply = await docxy.request(method, "/v2/")
        assert reply.code == 405
    methods = {
        dict(labels)["method"]
        for name, labels in samples(docxy.site.metrics)
        if name == "docxy_requests_total"
    }
    assert methods == {"other"}
