"""``--workers 2``: real worker processes sharing one socket and one cache.

What must hold across processes, not only within one: a blob crosses the
upstream link once however the clients are spread over the workers, a
worker killed mid-fill leaves nothing that is served as good (and is
started again), the cache directory still has one owner, and SIGTERM to
the supervisor drains every worker and exits 0.

Which worker a connection lands on is the kernel's choice; to put clients
on a given worker the tests stop the other one (SIGSTOP) while they
connect, so the kernel can only give the connection to the one running.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import MID, MID_LAYER
from tests.support.blob_counts import (
    blob_get_count,
    cached_blobs,
    manifest_get,
    manifest_gets,
)
from tests.support.blob_pull import open_blob, pull_token, read_all
from tests.support.digests import sha256_digest
from tests.support.docxy import TWISTD, Docxy, DocxyFactory, run_docxy, twistd_env
from tests.support.processes import LOOPBACK, ManagedProcess, free_port, wait_until
from tests.support.registry import MANIFEST_ACCEPT, Upstream, fetch
from tests.support.relay import GatedRelay
from tests.support.skopeo import assert_pulled, skopeo_pull

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def workers(docxy: ManagedProcess, count: int = 2) -> dict[int, int]:
    """index -> pid of the workers running now (the supervisor's log)."""
    current: dict[int, int] = {}

    def all_up() -> bool:
        current.clear()
        for index, pid in _STARTED.findall(docxy.log_text()):
            current[int(index)] = int(pid)
        return len(current) == count and all(_alive(p) for p in current.values())

    wait_until(all_up, 30, f"{count} workers")
    return current


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in "ZX"
    except OSError:
        return False


def holds(pid: int, suffix: str) -> bool:
    """Whether ``pid`` has a file whose name ends in ``suffix`` open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).endswith(suffix):
                return True
        except OSError:
            continue
    return False


def filling(pids: dict[int, int]) -> int:
    """The pid of the worker that has a fill's temp file open (a worker that
    is still starting may look at it for a moment, never keeps it open)."""
    found: list[int] = []

    def one() -> bool:
        found.clear()
        for pid in pids.values():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd).endswith(".fill"):
                        found.append(pid)
                        break
                except OSError:
                    continue
        return len(found) == 1

    wait_until(one, 30, "one worker to hold the fill")
    return found[0]


def test_two_workers_serve_skopeo_pulls_and_share_the_cache(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:1.0"]
    cache = tmp_path / "cache"
    metrics = free_port()
    docxy = docxy_factory(
        upstream.url,
        *("--cache-dir", str(cache), "--workers", "2"),
        *("--metrics-port", f"tcp:{metrics}:interface={LOOPBACK}"),
    )
    assert len(workers(docxy)) == 2
    before = len(upstream.requests())
    skopeo_pull(docxy.hostport, "multi:1.0", tmp_path / "one", "--all")
    assert blob_get_count(upstream.requests()[before:], image.blobs) == len(image.blobs)
    # Whichever worker answers now, it finds what the other one cached.
    for n in range(3):
        middle = len(upstream.requests())
        skopeo_pull(docxy.hostport, "multi:1.0", tmp_path / f"again-{n}", "--all")
        assert_pulled(tmp_path / f"again-{n}", image.blobs)
        assert blob_get_count(upstream.requests()[middle:], image.blobs) == 0
    # One scrape, every worker's series (labelled), each family once.
    scrape = fetch(f"http://{LOOPBACK}:{metrics}/metrics")
    assert scrape.status == 200
    text = scrape.body.decode()
    gauges = re.findall(r'^docxy_requests_in_flight\{worker="(\d)"\}', text, re.M)
    assert sorted(gauges) == ["0", "1"], text
    assert re.search(r'^docxy_requests_total\{worker="\d",', text, re.M), text
    assert text.count("# TYPE docxy_requests_total counter") == 1
    # The same probe answers as one process (docs/operations.md).
    ready = fetch(f"http://{LOOPBACK}:{metrics}/ready")
    assert (ready.status, json.loads(ready.body)) == (200, {"status": "ready"})
    health = fetch(f"http://{LOOPBACK}:{metrics}/health")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    assert docxy.stop() == 0


@dataclass
class HeldFill:
    """Two workers; one client's GET started a fill the relay holds mid-body."""

    docxy: Docxy
    pids: dict[int, int]
    token: str
    layer: str
    filler: int  # the pid of the worker filling
    conns: list[tuple[http.client.HTTPConnection, http.client.HTTPResponse]]

    def get(self) -> None:
        self.conns.append(open_blob(self.docxy, MID.repo, self.layer, self.token))


def held_fill(
    docxy_factory: DocxyFactory,
    upstream: Upstream,
    relay: GatedRelay,
    cache: Path,
    *options: str,
) -> HeldFill:
    docxy = docxy_factory(
        relay.url, "--cache-dir", str(cache), "--workers", "2", *options
    )
    pids = workers(docxy)
    token = pull_token(docxy, MID.repo)
    layer = upstream.images[MID.ref].layers["linux/amd64"][0]
    relay.hold_after(4 * 1024 * 1024)  # the fill stops at ~4 of 24 MiB
    held = HeldFill(docxy, pids, token, layer, 0, [])
    held.get()
    wait_until(lambda: relay.held() == 1, 30, "the fill to be held mid-body")
    held.filler = filling(pids)
    # Mid-body in the file too: the relay's count is bytes sent to the
    # filler, which may not have read (or written) any of them yet, and the
    # claim's file is open from before its upstream GET.
    temp = cache / "tmp" / (layer.replace(":", "-") + ".fill")
    wait_until(lambda: _size(temp) > 0, 30, "the fill's first bytes on disk")
    return held


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_eight_cold_pulls_over_two_workers_make_one_upstream_get(
    docxy_factory: DocxyFactory, mid_upstream: Upstream, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    relay = GatedRelay(mid_upstream.registry.port)
    start = len(mid_upstream.requests())
    try:
        held = held_fill(docxy_factory, mid_upstream, relay, cache)
        docxy, layer, conns = held.docxy, held.layer, held.conns
        other = next(p for p in held.pids.values() if p != held.filler)
        # Three more clients on the filling worker, four on the other one.
        for stopped, count in ((other, 3), (held.filler, 4)):
            os.kill(stopped, signal.SIGSTOP)
            try:
                for _ in range(count):
                    held.get()
            finally:
                os.kill(stopped, signal.SIGCONT)
        statuses = [response.status for _, response in conns]
        assert statuses == [200] * 8, (statuses, docxy.log_text()[-3000:])
        relay.release()
        bodies = [read_all(response) for _, response in conns]
        assert [sha256_digest(body) for body in bodies] == [layer] * 8
        assert blob_get_count(mid_upstream.requests()[start:], [layer]) == 1
        assert layer in cached_blobs(cache)
        assert list((cache / "tmp").iterdir()) == []
        assert docxy.stop() == 0
    finally:
        relay.close()


def test_a_manifest_missed_on_both_workers_at_once_is_one_upstream_get(
    docxy_factory: DocxyFactory, mid_upstream: Upstream, tmp_path: Path
) -> None:
    """Docker Hub counts each manifest GET as a pull: a client on each worker
    asking for the same uncached manifest at the same moment costs one. The
    second worker waits for the first one's GET (it holds the manifest's
    claim file open meanwhile), then answers from the shared cache."""
    image = mid_upstream.images[MID.ref]
    relay = GatedRelay(mid_upstream.registry.port)
    try:
        docxy = docxy_factory(
            relay.url, "--cache-dir", str(tmp_path / "cache"), "--workers", "2"
        )
        first, second = workers(docxy).values()
        token = pull_token(docxy, MID.repo)
        url = f"{docxy.url}/v2/{MID.repo}/manifests/{image.digest}"
        headers = {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}
        since = len(mid_upstream.requests())
        relay.hold_answers(manifest_get)
        with ThreadPoolExecutor(2) as pool:
            os.kill(second, signal.SIGSTOP)  # the first client lands on `first`
            try:
                one = pool.submit(fetch, url, headers=headers)
                wait_until(lambda: relay.held() == 1, 30, "the first worker's GET")
            finally:
                os.kill(second, signal.SIGCONT)
            os.kill(first, signal.SIGSTOP)  # the second one on `second`
            try:
                two = pool.submit(fetch, url, headers=headers)
                wait_until(
                    lambda: holds(second, ".manifest") or relay.held() == 2,
                    30,
                    "the second worker to wait for the first or GET it too",
                )
            finally:
                os.kill(first, signal.SIGCONT)
            relay.hold_answers(None)
            relay.release_answers()
            replies = [one.result(), two.result()]
    finally:
        relay.close()
    manifest = image.manifests[image.digest]
    assert [(r.status, r.body) for r in replies] == [(200, manifest)] * 2
    gets = manifest_gets(mid_upstream.requests()[since:])
    assert gets == [f"/v2/{MID.repo}/manifests/{image.digest}"], gets
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert docxy.stop() == 0


def test_a_worker_killed_mid_fill_serves_nothing_corrupt_and_is_restarted(
    docxy_factory: DocxyFactory, mid_upstream: Upstream, tmp_path: Path
) -> None:
    image = mid_upstream.images[MID.ref]
    cache = tmp_path / "cache"
    relay = GatedRelay(mid_upstream.registry.port)
    try:
        held = held_fill(docxy_factory, mid_upstream, relay, cache)
        docxy, layer, conns, filler = held.docxy, held.layer, held.conns, held.filler
        os.kill(filler, signal.SIGSTOP)  # the next client lands on the other
        try:
            held.get()
        finally:
            os.kill(filler, signal.SIGKILL)
        bodies = [read_all(response) for _, response in conns]
        # A short read for both: the one of the killed worker and the one
        # reading the dead fill from the other worker.
        assert all(len(body) < MID_LAYER for body in bodies), [len(b) for b in bodies]
        assert layer not in cached_blobs(cache)
        relay.release()
        restarted = workers(docxy)
        assert filler not in restarted.values()
        before = len(mid_upstream.requests())
        out = tmp_path / "healed" / "out"
        skopeo_pull(docxy.hostport, "mid:1", out)
        assert blob_get_count(mid_upstream.requests()[before:], [layer]) == 1
        assert_pulled(out, image.blobs)
        assert sha256_digest(cached_blobs(cache)[layer].read_bytes()) == layer
        assert [p.name for p in (cache / "tmp").iterdir()] == []
        assert docxy.stop() == 0
    finally:
        relay.close()


def test_a_stopped_worker_mid_fill_does_not_hold_up_the_other_workers_clients(
    docxy_factory: DocxyFactory, mid_upstream: Upstream, tmp_path: Path
) -> None:
    # The filling worker keeps its lock while stopped (SIGSTOP, hung): the
    # other worker's client gets the headers at once and what the file
    # has, then, once the fill made no progress for half the idle timeout,
    # the rest from the upstream.
    relay = GatedRelay(mid_upstream.registry.port)
    try:
        held = held_fill(
            docxy_factory,
            mid_upstream,
            relay,
            tmp_path / "cache",
            "--idle-timeout",
            "6",
        )
        os.kill(held.filler, signal.SIGSTOP)
        try:
            relay.release()  # the upstream answers the other worker
            held.get()
            _, response = held.conns[-1]
            assert response.status == 200
            assert sha256_digest(read_all(response)) == held.layer
        finally:
            os.kill(held.filler, signal.SIGCONT)
        assert "made no progress for 3.0s" in held.docxy.log_text()
        assert held.docxy.stop() == 0
    finally:
        relay.close()


def test_a_second_docxy_on_the_cache_of_two_workers_is_refused(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache), "--workers", "2")
    workers(docxy)
    second = run_docxy(
        *("--port", "tcp:0", "--upstream", upstream.url),
        *("--cache-dir", str(cache), "--workers", "2"),
        cwd=tmp_path,
    )
    assert second.returncode == 2, second.stderr
    assert f"in use by another Docxy (pid {docxy.pid})" in second.stderr
    assert docxy.alive()
    assert docxy.stop() == 0


def test_sigterm_to_the_supervisor_drains_every_worker_and_exits_0(
    docxy_factory: DocxyFactory, mid_upstream: Upstream, tmp_path: Path
) -> None:
    relay = GatedRelay(mid_upstream.registry.port)
    try:
        held = held_fill(docxy_factory, mid_upstream, relay, tmp_path / "cache")
        docxy = held.docxy
        os.kill(docxy.pid, signal.SIGTERM)  # the supervisor only, as kubelet does
        docxy.wait_for_log("shutting down: waiting up to")
        assert docxy.alive()
        relay.release()
        _, response = held.conns[0]
        assert sha256_digest(read_all(response)) == held.layer  # the transfer finished
        assert docxy.popen.wait(60) == 0
        assert not any(_alive(pid) for pid in held.pids.values())
        docxy.stop()
    finally:
        relay.close()


def test_with_a_log_file_the_supervisor_writes_the_workers_lines(
    upstream: Upstream, tmp_path: Path
) -> None:
    log_file = tmp_path / "docxy.log"
    port = free_port()
    docxy = ManagedProcess(
        [
            *(TWISTD, "-n", "--pidfile=", f"--logfile={log_file}", "docxy"),
            *("--port", f"tcp:{port}:interface={LOOPBACK}", "--no-cache"),
            *("--upstream", upstream.url, "--workers", "2", "--log-format", "json"),
        ],
        tmp_path / "stdout",
        env=twistd_env(),
        cwd=tmp_path,
    )
    try:
        docxy.wait_for_port(port)
        assert fetch(f"http://{LOOPBACK}:{port}/health").status == 200

        def access_lines() -> list[dict[str, object]]:
            events = [json.loads(line) for line in log_file.read_text().splitlines()]
            return [e for e in events if e.get("path") == "/health"]

        wait_until(lambda: bool(access_lines()), 30, "the access line")
        assert access_lines()[0]["worker"] in (0, 1)
    finally:
        assert docxy.stop() == 0


def test_workers_share_the_socket_systemd_passes_in(tmp_path: Path) -> None:
    """Socket activation (deploy/systemd/docxy.socket) with two workers."""
    port = free_port()
    docxy = ManagedProcess(
        [
            *("systemd-socket-activate", "--listen", f"{LOOPBACK}:{port}"),
            *("--setenv=PYTHONPATH", "--fdname=docxy.socket"),
            *(TWISTD, "-n", "--pidfile=", "docxy", "--workers", "2"),
            *("--port", "systemd:domain=INET:index=0", "--no-cache"),
            *("--public-url", f"http://{LOOPBACK}:{port}"),
        ],
        tmp_path / "docxy.log",
        env=twistd_env(),
    )
    try:
        docxy.wait_for_log("Listening on", timeout=30)  # systemd-socket-activate
        # The first connection starts Docxy, which then serves it.
        assert fetch(f"http://{LOOPBACK}:{port}/health").status == 200
        assert len(workers(docxy)) == 2
        for _ in range(4):
            assert fetch(f"http://{LOOPBACK}:{port}/health").status == 200
        assert "configuration error" not in docxy.log_text()
    finally:
        assert docxy.stop() == 0
