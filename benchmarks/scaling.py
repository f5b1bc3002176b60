"""Docxy beyond one process: replicas behind a balancer, and two tiers.

Not a test: it prints ratios for a person to read (benchmarks/README.md).
Everything runs on 127.0.0.1 on free ports; nothing leaves the machine.

    .venv/bin/python benchmarks/scaling.py [--balancer nginx|haproxy]
        [--layers 4] [--layer-mib 8] [--clients 12] [--nodes 4] [--keys 300]

It starts a real distribution registry with a Docker-Hub-like token
service, pushes one image of ``--layers`` layers of incompressible bytes,
and then measures, each case with fresh caches:

1. **hash**: 3 Docxy replicas behind the balancer's shipped configuration
   (deploy/balancer/, consistent hashing), ``--clients`` concurrent pullers
   of the image through it;
2. **round-robin**: the same, with the hash line swapped for round-robin;
3. **removal**: which replica each of ``--keys`` blob digests lands on,
   before and after one of 3 replicas leaves the balancer's set (nginx or
   HAProxy restarted with 2 servers), and the upstream bytes the image's
   next pull costs then;
4. **tiers**: ``--nodes`` node-local Docxy processes in front of one
   regional Docxy, ``--clients`` pullers spread over the nodes.

Upstream bytes are the sizes of the blob GETs the registry answered 200 (its
own access log), divided by the image's size: 1.0x means every blob crossed
the link once. Node-to-regional bytes come from each node's access log
(blob GETs it fetched from the regional tier). A puller is a small HTTP
client: ping, token, manifest, then every blob, each checked against its
digest. Every process is stopped by PID at the end, also after an error
or Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.balancer import BALANCERS, Balancer  # noqa: E402
from tests.support.docxy import AccessLog, Docxy  # noqa: E402
from tests.support.images import ImageInfo, ImageSpec, populate  # noqa: E402
from tests.support.processes import LOOPBACK, ProcessGroup, free_port  # noqa: E402
from tests.support.registry import (  # noqa: E402
    MANIFEST_ACCEPT,
    Upstream,
    parse_challenge,
    start_upstream,
)

MiB = 1024 * 1024
REPO_NAME = "bench/image"
REPLICAS = 3


@dataclass(frozen=True)
class Image:
    info: ImageInfo
    sizes: dict[str, int]  # blob digest -> bytes

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def image_sizes(info: ImageInfo) -> dict[str, int]:
    manifest = json.loads(info.manifests[info.digest])
    return {
        d["digest"]: int(d["size"]) for d in [manifest["config"], *manifest["layers"]]
    }


# --- a small puller -----------------------------------------------------------


def request(
    hostport: str, method: str, target: str, headers: dict[str, str]
) -> http.client.HTTPResponse:
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request(method, target, headers=headers)
    return conn.getresponse()


def pull(hostport: str, image: Image) -> None:
    """What a client does: ping, token, manifest, blobs; digests checked."""
    ping = request(hostport, "GET", "/v2/", {})
    ping.read()
    _, params = parse_challenge(ping.getheader("www-authenticate") or "")
    realm = urlsplit(params["realm"])
    query = urlencode(
        {"service": params["service"], "scope": f"repository:{REPO_NAME}:pull"}
    )
    answer = request(realm.netloc, "GET", f"{realm.path}?{query}", {})
    token = json.loads(answer.read())["token"]
    auth = {"Authorization": f"Bearer {token}"}
    manifest = request(
        hostport,
        "GET",
        f"/v2/{REPO_NAME}/manifests/{image.info.tag}",
        {**auth, "Accept": MANIFEST_ACCEPT},
    )
    body = manifest.read()
    assert manifest.status == 200, (manifest.status, body[:200])
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.info.digest
    for digest in image.sizes:
        blob = request(hostport, "GET", f"/v2/{REPO_NAME}/blobs/{digest}", auth)
        h = hashlib.sha256()
        while chunk := blob.read(MiB):
            h.update(chunk)
        assert blob.status == 200 and "sha256:" + h.hexdigest() == digest, digest


def pull_all(hostports: Sequence[str], image: Image, clients: int) -> float:
    """``clients`` pulls at once, spread over ``hostports``; wall seconds."""
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = [
            pool.submit(pull, hostports[n % len(hostports)], image)
            for n in range(clients)
        ]
        for future in done:
            future.result()
    return time.monotonic() - started


# --- counting -----------------------------------------------------------------

_BLOB = re.compile(r"/blobs/(sha256:[0-9a-f]{64})$")


def upstream_bytes(upstream: Upstream, since: int, image: Image) -> int:
    total = 0
    for entry in upstream.registry_entries()[since:]:
        m = _BLOB.search(entry.path.split("?", 1)[0])
        if entry.method == "GET" and entry.status == 200 and m:
            total += image.sizes.get(m.group(1), 0)
    return total


def fetched_from_upstream(log: AccessLog, image: Image) -> int:
    """Blob bytes a Docxy fetched from its upstream (its access log)."""
    total = 0
    for e in log.entries():
        m = _BLOB.search(e.bare_path)
        if e.method == "GET" and e.upstream_status == "200" and m:
            total += image.sizes.get(m.group(1), 0)
    return total


# --- the cases ----------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.group = ProcessGroup()
        self.upstream: Upstream | None = None
        self.runs = 0

    def dir(self, name: str) -> Path:
        self.runs += 1
        path = self.workdir / f"{self.runs:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def docxy(self, upstream_url: str, public: str | None, name: str) -> Docxy:
        base = self.dir(name)
        extra = ["--cache-dir", str(base / "cache")]
        if public:
            extra += ["--public-url", public]
        d = Docxy(upstream_url, base / "docxy.log", extra)
        self.group.managed.append(d)
        return d

    def balancer(self, replicas: Sequence[Docxy], port: int, hashing: bool) -> Balancer:
        kind = BALANCERS[self.args.balancer]
        lb = kind(self.dir(kind.kind), [r.hostport for r in replicas], port, hashing)
        self.group.managed.append(lb)
        return lb

    def start(self) -> Image:
        up = start_upstream(self.workdir / "upstream", [REPO_NAME])
        self.upstream = up
        spec = ImageSpec(
            REPO_NAME,
            "1",
            layer_sizes=(self.args.layer_mib * MiB,) * self.args.layers,
            seed=secrets.token_hex(4),
        )
        (info,) = populate(up, self.workdir / "images", [spec]).values()
        return Image(info, image_sizes(info))

    def replicas(
        self, image: Image, hashing: bool
    ) -> tuple[float, float, list[Docxy], Balancer]:
        assert self.upstream is not None
        port = free_port()
        public = f"http://{LOOPBACK}:{port}"
        name = "hash" if hashing else "rr"
        replicas = [
            self.docxy(self.upstream.url, public, f"{name}-replica-{i}")
            for i in range(REPLICAS)
        ]
        lb = self.balancer(replicas, port, hashing)
        since = len(self.upstream.registry_entries())
        wall = pull_all([lb.hostport], image, self.args.clients)
        ratio = upstream_bytes(self.upstream, since, image) / image.total
        return ratio, wall, replicas, lb

    def placement(self, lb: Balancer, replicas: Sequence[Docxy]) -> dict[str, int]:
        """Which replica each of ``--keys`` digests lands on (HEADs)."""
        logs = [AccessLog(r) for r in replicas]
        keys = [
            "sha256:" + hashlib.sha256(f"key-{n}".encode()).hexdigest()
            for n in range(self.args.keys)
        ]
        for key in keys:
            request(lb.hostport, "HEAD", f"/v2/{REPO_NAME}/blobs/{key}", {}).read()
        where: dict[str, int] = {}
        for i, log in enumerate(logs):
            for e in log.entries():
                m = _BLOB.search(e.bare_path)
                if m and e.method == "HEAD":
                    where[m.group(1)] = i
        assert len(where) == len(keys), (len(where), len(keys))
        return where

    def removal(
        self, image: Image, replicas: list[Docxy], lb: Balancer
    ) -> tuple[float, float, float]:
        """(keys moved, of them not from the removed replica, re-fill bytes)."""
        assert self.upstream is not None
        before = self.placement(lb, replicas)
        port = lb.port
        lb.stop()
        victim = replicas[-1]
        victim.stop()
        survivors = replicas[:-1]
        lb = self.balancer(survivors, port, hashing=True)
        after = self.placement(lb, survivors)
        moved = [k for k in before if before[k] != after.get(k)]
        needless = [k for k in moved if before[k] != len(replicas) - 1]
        since = len(self.upstream.registry_entries())
        pull_all([lb.hostport], image, 1)
        refill = upstream_bytes(self.upstream, since, image) / image.total
        return len(moved) / len(before), len(needless) / len(before), refill

    def tiers(self, image: Image) -> tuple[float, list[float]]:
        assert self.upstream is not None
        regional = self.docxy(self.upstream.url, None, "regional")
        nodes = [
            self.docxy(regional.url, None, f"node-{i}") for i in range(self.args.nodes)
        ]
        logs = [AccessLog(n) for n in nodes]
        since = len(self.upstream.registry_entries())
        pull_all([n.hostport for n in nodes], image, self.args.clients)
        hub = upstream_bytes(self.upstream, since, image) / image.total
        per_node = [fetched_from_upstream(log, image) / image.total for log in logs]
        return hub, per_node


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--balancer", choices=sorted(BALANCERS), default="nginx")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=8)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    workdir = Path(tempfile.mkdtemp(prefix="docxy-scaling-"))
    bench = Bench(args, workdir)
    try:
        image = bench.start()
        print(
            f"image {REPO_NAME}:1: {len(image.sizes)} blobs, "
            f"{image.total / MiB:.1f} MiB; {args.clients} clients; "
            f"balancer {args.balancer}"
        )
        hashed, hash_wall, replicas, lb = bench.replicas(image, hashing=True)
        rr, rr_wall, _, _ = bench.replicas(image, hashing=False)
        print(f"3 replicas, consistent hash: upstream bytes {hashed:.2f}x the image")
        print(f"3 replicas, round-robin:     upstream bytes {rr:.2f}x the image")
        print(f"wall time, hash / round-robin: {hash_wall / rr_wall:.2f}")
        moved, needless, refill = bench.removal(image, replicas, lb)
        print(
            f"one of 3 replicas removed: {moved:.0%} of {args.keys} keys moved "
            f"(ideal 33%), {needless:.0%} moved that were not on it; "
            f"the next pull: upstream bytes {refill:.2f}x the image"
        )
        hub, per_node = bench.tiers(image)
        print(
            f"{args.nodes} nodes -> 1 regional: upstream bytes {hub:.2f}x the image; "
            "node->regional bytes per node " + ", ".join(f"{r:.2f}x" for r in per_node)
        )
        return 0
    finally:
        bench.group.stop_all()
        if bench.upstream is not None:
            bench.upstream.stop()
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
