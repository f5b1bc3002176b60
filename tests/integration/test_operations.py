"""Operating a real ``twistd docxy``: /metrics after real pulls, /ready, SIGTERM.

The metrics are read the way Prometheus reads them (the text format over
HTTP from ``--metrics-port``) and checked against what the registry holds:
bytes served are the blobs' sizes, not merely names that exist.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from docxy.cache.fill_lock import LENGTH
from tests.support.blob_server import BlobServerProcess
from tests.support.docxy import DocxyFactory, twistd_env, with_metrics
from tests.support.metrics import one, scrape, total
from tests.support.processes import LOOPBACK, free_port, port_open, wait_until
from tests.support.registry import Upstream, fetch
from tests.support.skopeo import skopeo_pull

MiB = 1024 * 1024


def fill_files(cache: Path) -> list[Path]:
    """The fills' temp files (not the length notes beside them, fill_lock)."""
    return [p for p in (cache / "tmp").iterdir() if not p.name.endswith(LENGTH)]


def test_metrics_follow_two_real_pulls(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    sizes = {b: len(upstream.blob_bytes(image.repo, b)) for b in image.blobs}
    size = sum(sizes.values())
    docxy, metrics_port = with_metrics(
        docxy_factory, upstream.url, "--cache-dir", str(tmp_path / "cache")
    )
    # Not on the mirror's own port.
    assert fetch(f"{docxy.url}/metrics").status == 404

    skopeo_pull(docxy.hostport, "alpine:3.20", tmp_path / "one" / "out")
    first = scrape(metrics_port)
    blobs_ok = {"route": "blobs", "method": "GET", "status": "200"}
    assert one(first, "docxy_requests_total", **blobs_ok) == len(sizes)
    assert one(first, "docxy_response_bytes_total", route="blobs") == size
    assert one(first, "docxy_cache_upstream_bytes_total") == size
    assert one(first, "docxy_cache_served_bytes_total") == size
    assert one(first, "docxy_cache_blobs") == len(sizes)
    assert one(first, "docxy_cache_size_bytes") == size
    assert one(first, "docxy_cache_fills_in_flight") == 0
    assert one(first, "docxy_cache_misses_total") >= len(sizes)
    assert one(first, "docxy_cache_hits_total") == 0
    assert total(first, "docxy_upstream_response_seconds_count") >= len(sizes)
    assert one(first, "docxy_requests_in_flight") == 0

    skopeo_pull(docxy.hostport, "alpine:3.20", tmp_path / "two" / "out")
    second = scrape(metrics_port)
    assert one(second, "docxy_requests_total", **blobs_ok) == 2 * len(sizes)
    assert one(second, "docxy_response_bytes_total", route="blobs") == 2 * size
    assert one(second, "docxy_cache_served_bytes_total") == 2 * size
    # Nothing new came from upstream: every blob was a hit.
    assert one(second, "docxy_cache_upstream_bytes_total") == size
    assert one(second, "docxy_cache_misses_total") == one(
        first, "docxy_cache_misses_total"
    )
    assert one(second, "docxy_cache_hits_total") >= len(sizes)
    assert one(second, "docxy_cache_evictions_total") == 0


def test_readiness_follows_the_cache_directory(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    metrics_port = free_port()
    docxy = docxy_factory(
        upstream.url,
        "--cache-dir",
        str(cache),
        "--metrics-port",
        f"tcp:{metrics_port}:interface={LOOPBACK}",
    )
    probes = f"http://{LOOPBACK}:{metrics_port}"
    for base in (docxy.url, probes):
        ready = fetch(f"{base}/ready")
        assert (ready.status, json.loads(ready.body)) == (200, {"status": "ready"})
    # A directory the cache cannot recreate (it recreates removed ones).
    shutil.rmtree(cache / "tmp")
    (cache / "tmp").write_text("not a directory")
    for base in (docxy.url, probes):
        ready = fetch(f"{base}/ready")
        assert ready.status == 503
        reason = json.loads(ready.body)["reason"]
        assert reason.startswith(f"cache directory unusable: {cache}: "), reason
        assert fetch(f"{base}/health").status == 200  # alive all the same
    # Pulls still work meanwhile, uncached.
    assert fetch(f"{docxy.url}/v2/").status == 401
    (cache / "tmp").unlink()
    # The cache retries by itself (a test write every few seconds).
    wait_until(lambda: fetch(f"{docxy.url}/ready").status == 200, 30, "ready")
    assert (cache / "tmp").is_dir()


def test_sigterm_lets_a_big_transfer_finish_and_exits_0(
    docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    blob = BlobServerProcess(tmp_path, 256 * MiB)
    cache = tmp_path / "cache"
    metrics_port = free_port()
    try:
        docxy = docxy_factory(
            blob.url,
            "--cache-dir",
            str(cache),
            "--metrics-port",
            f"tcp:{metrics_port}:interface={LOOPBACK}",
            library_prefix="off",
        )
        conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=60)
        conn.request("GET", blob.blob_path())
        response = conn.getresponse()
        assert response.status == 200
        digest = hashlib.sha256()
        received = 0
        while received < 4 * MiB:  # the transfer is under way, then we stop reading
            chunk = response.read(256 * 1024)
            assert chunk
            digest.update(chunk)
            received += len(chunk)

        docxy.kill(signal.SIGTERM)
        probes = f"http://{LOOPBACK}:{metrics_port}/ready"
        wait_until(
            lambda: fetch(probes).status == 503, 30, "/ready to say shutting down"
        )
        assert json.loads(fetch(probes).body)["reason"] == "shutting down"
        wait_until(lambda: not port_open(docxy.port), 30, "the listener to close")
        assert docxy.alive()  # still draining: our transfer is in flight

        while chunk := response.read(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
        assert received == blob.size
        assert f"sha256:{digest.hexdigest()}" == blob.digest
        conn.close()
        assert docxy.popen.wait(60) == 0
        docxy.stop()
        log = docxy.log_text()
        assert "shutting down: waiting up to 30s for 1 requests" in log
        assert "shutting down: all transfers done" in log
        # The fill finished too, verified: an entry, and no temp file.
        algorithm, hexdigest = blob.digest.split(":")
        assert (cache / "blobs" / algorithm / hexdigest[:2] / hexdigest).is_file()
        assert list((cache / "tmp").iterdir()) == []
    finally:
        blob.stop()


def test_shutdown_timeout_cuts_what_is_left_and_leaves_no_entry(
    docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    """A client that never reads past the deadline is cut; the exit is still 0."""
    blob = BlobServerProcess(tmp_path, 64 * MiB, stall_after=8 * MiB)
    cache = tmp_path / "cache"
    try:
        docxy = docxy_factory(
            blob.url,
            "--cache-dir",
            str(cache),
            "--shutdown-timeout",
            "1",
            library_prefix="off",
        )
        conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=60)
        conn.request("GET", blob.blob_path())
        response = conn.getresponse()
        assert response.status == 200
        assert response.read(MiB)
        # The upstream stalls mid-body: the fill cannot finish in time.
        wait_until(lambda: len(fill_files(cache)) == 1, 30, "a fill")
        docxy.kill(signal.SIGTERM)
        assert docxy.popen.wait(60) == 0
        docxy.stop()
        assert "shutdown-timeout: 1 requests, 1 fills and 1 connections still open" in (
            docxy.log_text()
        )
        try:
            rest = len(response.read())
        except http.client.IncompleteRead as e:
            rest = len(e.partial)
        assert MiB + rest < blob.size  # a short read, never a complete-looking body
        assert not any((cache / "blobs").rglob("*" + blob.digest.split(":")[1]))
    finally:
        blob.stop()


def test_json_logs_carry_the_access_fields_and_no_token(
    docxy_factory: DocxyFactory, upstream: Upstream
) -> None:
    docxy = docxy_factory(upstream.url, "--log-format", "json")
    answer = fetch(f"{docxy.url}/v2/alpine/manifests/3.20?token=s3cret-value")
    assert answer.status == 401
    wait_until(lambda: '"docxy.access"' in docxy.log_text(), 30, "the access line")
    events = [json.loads(line) for line in docxy.log_text().splitlines()]
    access = [e for e in events if e["log_namespace"] == "docxy.access"]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET"
    assert line["path"] == "/v2/alpine/manifests/3.20"
    assert line["status"] == 401
    assert line["upstream_status"] == 401
    assert line["outcome"] == "done"
    assert {"client", "bytes", "duration", "cache", "log_time"} <= set(line)
    assert "s3cret-value" not in docxy.log_text()


def docxy_cache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "docxy.cache.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **twistd_env()},
        timeout=120,
    )


def test_docxy_cache_beside_a_running_docxy_and_after_it(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    sizes = {b: len(upstream.blob_bytes(image.repo, b)) for b in image.blobs}
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    skopeo_pull(docxy.hostport, "alpine:3.20", tmp_path / "one" / "out")

    listed = docxy_cache("--cache-dir", str(cache), "list", "--kind", "blob")
    assert listed.returncode == 0
    assert listed.stderr.startswith(
        f"docxy-cache: warning: a Docxy (pid {docxy.pid}) is using {cache}"
    )
    rows = {
        line.split()[1]: int(line.split()[2]) for line in listed.stdout.splitlines()
    }
    assert rows == sizes
    refused = docxy_cache("--cache-dir", str(cache), "prune", "--max-size", "1")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"docxy-cache: {cache} is in use by a Docxy (pid {docxy.pid}): stop it "
        "first (it keeps the cache's index in memory)\n"
    )

    docxy.stop()
    checked = docxy_cache("--cache-dir", str(cache), "verify")
    assert (checked.returncode, checked.stdout) == (0, "")
    biggest = max(sizes, key=sizes.__getitem__)
    evicted = docxy_cache("--cache-dir", str(cache), "evict", biggest)
    assert (evicted.returncode, evicted.stdout) == (0, f"evicted blob {biggest}\n")
    size = docxy_cache("--cache-dir", str(cache), "size")
    left = sum(sizes.values()) - sizes[biggest]
    assert f"blobs: {len(sizes) - 1} files, {left} bytes" in size.stdout
    # The next Docxy fetches the evicted blob again, and only that one.
    restarted = docxy_factory(upstream.url, "--cache-dir", str(cache))
    before = len(upstream.requests())
    skopeo_pull(restarted.hostport, "alpine:3.20", tmp_path / "two" / "out")
    fetched = [
        path
        for method, path in upstream.requests()[before:]
        if method == "GET" and "/blobs/" in path
    ]
    assert [p.rsplit("/", 1)[1] for p in fetched] == [biggest]
