"""Cached manifests by tag with ``wrk``: one worker against N (``--workers``).

Not a test: it prints figures for a human (see benchmarks/README.md).

    .venv/bin/python benchmarks/workers.py [--workers 2] [--rounds 3]
        [--seconds 10] [--connections 64]

Upstream: a real distribution registry (Debian ``docker-registry``), no
auth, on 127.0.0.1, holding a manifest tagged ``v1``. Each round starts a
fresh Docxy with ``--workers 1`` and one with ``--workers N`` (the order
alternates), fetches the tag once (so it is cached: ``cache-freshness``
is far longer than a round), then runs ``wrk -t2`` against it. It prints
each run's requests/s, the CPU seconds Docxy's processes used (in total
and per busy process: the split shows whether the workers shared the
load) and wrk itself, and the median of the per-round ratios
N/1. wrk shares the machine's cores with Docxy: on a 2-core machine its
own CPU is what the second worker competes with, so it is printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.blob_throughput import (  # noqa: E402
    REGISTRY_BIN,
    REPO_NAME,
    cpu_seconds,
    push_blob,
    registry_config,
)
from tests.support.docxy import Docxy  # noqa: E402
from tests.support.processes import LOOPBACK, ManagedProcess, free_port  # noqa: E402

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def push_tag(port: int) -> None:
    """A small layer, a config and a manifest naming them, tagged v1."""
    layer, config = push_blob(port, 4096, b"layer"), push_blob(port, 64, b"config")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 64,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer,
                    "size": 4096,
                }
            ],
        }
    ).encode()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    conn.request(
        "PUT",
        f"/v2/{REPO_NAME}/manifests/v1",
        body=manifest,
        headers={"Content-Type": MANIFEST_TYPE},
    )
    status = conn.getresponse().status
    conn.close()
    if status != 201:
        raise RuntimeError(f"manifest PUT answered {status}")


def family(pid: int) -> list[int]:
    """``pid`` and its children (the supervisor and its workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def get_manifest(url: str) -> str:
    conn = http.client.HTTPConnection(LOOPBACK, int(url.rsplit(":", 1)[1]), timeout=60)
    conn.request(
        "GET", f"/v2/{REPO_NAME}/manifests/v1", headers={"Accept": MANIFEST_TYPE}
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"manifest GET answered {resp.status}")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def wrk(
    url: str, seconds: int, connections: int, pids: list[int]
) -> tuple[float, list[float], float]:
    """(requests/s, CPU seconds of each Docxy process, wrk's CPU seconds)."""
    before = [cpu_seconds(p) for p in pids]
    process = subprocess.Popen(
        [
            *("wrk", "-t2", f"-c{connections}", f"-d{seconds}s"),
            *("-H", f"Accept: {MANIFEST_TYPE}", url),
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    docxy_cpu = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    if process.returncode != 0 or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed:\n{out}")
    rate = float(next(x for x in out.splitlines() if "Requests/sec" in x).split()[1])
    return rate, docxy_cpu, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="docxy-workers-") as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "registry.yml").write_text(registry_config(work / "storage", port))
        registry = ManagedProcess(
            [REGISTRY_BIN, "serve", str(work / "registry.yml")], work / "registry.log"
        )
        try:
            registry.wait_for_port(port)
            push_tag(port)
            rates: dict[int, list[float]] = {1: [], args.workers: []}
            print(
                f"wrk -t2 -c{args.connections} -d{args.seconds}s, cached manifest "
                f"by tag, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
            )
            print("| round | workers | req/s | Docxy CPU s (per process) | wrk CPU s |")
            print("|---|---|---|---|---|")
            for n in range(args.rounds):
                order = (1, args.workers) if n % 2 == 0 else (args.workers, 1)
                for count in order:
                    name = f"r{n}-w{count}"
                    docxy = Docxy(
                        f"http://{LOOPBACK}:{port}",
                        work / f"{name}.log",
                        ["--cache-dir", str(work / name), "--workers", str(count)],
                        library_prefix=None,
                    )
                    try:
                        get_manifest(docxy.url)  # cached from now on
                        url = f"{docxy.url}/v2/{REPO_NAME}/manifests/v1"
                        rate, cpu, wrk_cpu = wrk(
                            url, args.seconds, args.connections, family(docxy.pid)
                        )
                    finally:
                        docxy.stop()
                    rates[count].append(rate)
                    each = "/".join(f"{c:.1f}" for c in cpu if c >= 0.05)
                    print(
                        f"| {n} | {count} | {rate:.0f} | {sum(cpu):.1f} ({each}) "
                        f"| {wrk_cpu:.1f} |"
                    )
            pairs = zip(rates[args.workers], rates[1], strict=True)
            ratios = [many / one for many, one in pairs]
            print(
                f"\n{args.workers} workers / 1 worker: median "
                f"{statistics.median(ratios):.2f}x (rounds: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f"); load at the end {os.getloadavg()[0]:.2f}"
            )
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
