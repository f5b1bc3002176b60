"""The supervisor's --metrics-port answers /health and /ready as one process.

Real worker probe sites on Unix sockets, the supervisor's site on
127.0.0.1: a probe or a load balancer reading the JSON must not have to
know how many workers a Docxy runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from docxy.metrics import Metrics
from docxy.probes import Readiness, probes_site
from docxy.resources import HealthResource
from docxy.worker_probes import ask, workers_site


async def get(port: Any, path: str) -> tuple[int, str, Any]:
    url = f"http://127.0.0.1:{port.getHost().port}/{path}"
    response = await treq.get(url)
    body = await response.content()
    kind = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
    return response.code, kind, json.loads(body)


class Docxy:
    """Two workers' probe sockets and the supervisor's listener on them."""

    def __init__(self, tmp_path: Path) -> None:
        self.readiness = [Readiness(), Readiness()]
        self.sockets: dict[int, Path] = {}
        self.ports: list[Any] = []
        self.tmp_path = tmp_path

    async def start(self) -> Any:
        for index, readiness in enumerate(self.readiness):
            path = self.tmp_path / f"worker-{index}.sock"
            site = probes_site(Metrics(), readiness, HealthResource())
            endpoint = UNIXServerEndpoint(reactor, str(path), mode=0o600)
            self.ports.append(await endpoint.listen(site))
            self.sockets[index] = path
        site = workers_site(reactor, lambda: dict(self.sockets))
        supervisor = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            site
        )
        self.ports.append(supervisor)
        return supervisor

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()


async def single_process_ready(readiness: Readiness, tmp_path: Path) -> Any:
    site = probes_site(Metrics(), readiness, HealthResource())
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        return await get(port, "ready")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_health_is_the_single_process_json(tmp_path: Path) -> None:
    running = Docxy(tmp_path)
    supervisor = await running.start()
    try:
        code, kind, body = await get(supervisor, "health")
    finally:
        await running.stop()
    assert (code, kind) == (200, "application/json")
    assert body["status"] == "ok" and body["version"]


@pytest_twisted.ensureDeferred
async def test_ready_is_the_single_process_json(tmp_path: Path) -> None:
    running = Docxy(tmp_path)
    supervisor = await running.start()
    try:
        ready = await get(supervisor, "ready")
        running.readiness[1].draining = True
        not_ready = await get(supervisor, "ready")
        one = Readiness()
        alone_ready = await single_process_ready(one, tmp_path)
        one.draining = True
        alone_not_ready = await single_process_ready(one, tmp_path)
    finally:
        await running.stop()
    assert ready == alone_ready == (200, "application/json", {"status": "ready"})
    assert alone_not_ready[:2] == not_ready[:2] == (503, "application/json")
    assert not_ready[2] == {"status": "not ready", "reason": "worker 1: shutting down"}
    assert alone_not_ready[2] == {"status": "not ready", "reason": "shutting down"}


@pytest_twisted.ensureDeferred
async def test_ready_without_workers_is_not_ready(tmp_path: Path) -> None:
    site = workers_site(reactor, dict)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        code, _, body = await get(port, "ready")
    finally:
        await port.stopListening()
    assert code == 503
    assert body == {"status": "not ready", "reason": "no worker running"}


class _Stalls(Resource):
    """A worker that sends its headers and part of a body, then no more."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.dropped: defer.Deferred[None] = defer.Deferred()

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", b"100")
        request.write(b"# HELP half")
        request.notifyFinish().addErrback(lambda _: self.dropped.callback(None))
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_worker_stalling_mid_body_is_dropped_at_the_timeout(
    tmp_path: Path,
) -> None:
    """The timeout covers the body too: the supervisor's scrape or /ready
    must not wait for ever on one worker (it did, once the headers came)."""
    worker = _Stalls()
    path = tmp_path / "worker-0.sock"
    endpoint = UNIXServerEndpoint(reactor, str(path), mode=0o600)
    port = await endpoint.listen(Site(worker))
    try:
        asking = defer.ensureDeferred(ask(reactor, path, b"metrics", timeout=0.1))
        with pytest.raises(defer.TimeoutError):
            await asking.addTimeout(30, reactor)  # a guard: it waited for ever
        # The worker sees its connection closed (a guard, should it not be).
        await worker.dropped.addTimeout(30, reactor)
    finally:
        await port.stopListening()
