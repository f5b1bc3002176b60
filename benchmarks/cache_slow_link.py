"""Pull-through caching over a slow upstream link: Docxy vs distribution vs direct.

Not a test: it prints figures for a human (see benchmarks/README.md). Needs
root (it creates a network namespace).

    sudo /tmp/venv/bin/python benchmarks/cache_slow_link.py [--size-mib 200]
        [--layers 4] [--clients 8] [--rate-mib 20] [--docxy-arg ARG ...] [--keep]

It creates a network namespace ``docxy-bench-<pid>`` joined to the host by a
veth pair. The pair gets a free private /30 (10.251.x.y); no other address
or route is touched. Both ends are shaped with ``tc qdisc ... tbf`` to
``--rate-mib`` MiB/s. A real distribution registry runs inside the
namespace as the upstream and holds one image of ``--layers`` tar layers of
incompressible deterministic bytes (``--size-mib`` MiB in total). Then, on
the host side (clients on 127.0.0.1), ``--clients`` concurrent ``skopeo
copy ... dir:`` pulls of that image are timed in five cases:

1. direct from the upstream, over the slow link;
2. through Docxy with a fresh ``--cache-dir`` (cold);
3. through ``docker-registry`` in proxy mode with fresh storage (cold);
4. through the same Docxy again (warm);
5. through the same distribution proxy again (warm).

For each case it reports the wall time until every client finished, the
bytes that crossed the veth (its rx/tx counters) and the requests the
upstream saw (from its access log). Every process it starts is stopped by
PID, and the namespace and veth pair are removed, on exit, error, Ctrl-C,
SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.docxy import Docxy  # noqa: E402
from tests.support.processes import (  # noqa: E402
    LOOPBACK,
    ManagedProcess,
    ProcessGroup,
    free_port,
    port_open,
    wait_until,
)
from tests.support.registry import (  # noqa: E402
    SYNC_PREFIX,
    AccessLogEntry,
    parse_access_log,
)
from tests.support.skopeo import SKOPEO, skopeo_env  # noqa: E402

MiB = 1024 * 1024
REGISTRY_BIN = "/usr/bin/docker-registry"
REPO_NAME = "bench/image"  # two components: no library/ prefixing applies
TAG = "1"
UPSTREAM_PORT = 5000
SUBNET_POOL = ipaddress.IPv4Network("10.251.0.0/16")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
BLOB_PATH = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
MANIFEST_PATH = re.compile(r"^/v2/.+/manifests/[^/]+$")

# Go programs (registry, skopeo) honour *_PROXY: make sure the registries
# never send anything to a proxy that may be set in the caller's environment.
NO_PROXY_ENV: dict[str, str] = {
    "HTTP_PROXY": "",
    "HTTPS_PROXY": "",
    "http_proxy": "",
    "https_proxy": "",
    "NO_PROXY": "*",
    "no_proxy": "*",
}


# --------------------------------------------------------------------------
# The slow link: a namespace, a veth pair, tbf on both ends
# --------------------------------------------------------------------------


def run(argv: Sequence[str], check: bool = True) -> str:
    """Run a short command (ip, tc); its stdout, or RuntimeError with stderr."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on an address or a route of the host (any table)."""
    found = []
    for entry in json.loads(run(["ip", "-4", "-j", "addr", "show"]) or "[]"):
        for a in entry.get("addr_info", []):
            found.append(
                ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            )
    for route in json.loads(run(["ip", "-4", "-j", "route", "show", "table", "all"])):
        dst = route.get("dst", "default")
        if dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def pick_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 of 10.251.0.0/16 that overlaps nothing the host has."""
    used = networks_in_use()
    subnets = list(SUBNET_POOL.subnets(new_prefix=30))
    for i in range(len(subnets)):
        net = subnets[(seed + i) % len(subnets)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /30 in {SUBNET_POOL}")


class SlowLink:
    """``docxy-bench-<pid>``: a namespace joined to the host by a shaped veth.

    Only what this object created is removed, and only by its own names.
    """

    def __init__(self, pid: int) -> None:
        self.ns = f"docxy-bench-{pid}"
        self.host_if = f"dxb{pid}h"  # <= 15 characters (pid <= 2**22)
        self.ns_if = f"dxb{pid}n"
        net = pick_subnet(pid * 7)
        host_ip, ns_ip = list(net.hosts())
        self.prefixlen = net.prefixlen
        self.host_ip = str(host_ip)
        self.ns_ip = str(ns_ip)
        self.made_ns = False
        self.made_link = False

    def create(self) -> None:
        run(["ip", "netns", "add", self.ns])
        self.made_ns = True
        run(
            [
                "ip",
                "link",
                "add",
                self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                self.ns_if,
                "netns",
                self.ns,
            ]
        )
        self.made_link = True
        run(
            [
                "ip",
                "addr",
                "add",
                f"{self.host_ip}/{self.prefixlen}",
                "dev",
                self.host_if,
            ]
        )
        run(["ip", "link", "set", self.host_if, "up"])
        nsip = ["ip", "-n", self.ns]
        run([*nsip, "addr", "add", f"{self.ns_ip}/{self.prefixlen}", "dev", self.ns_if])
        run([*nsip, "link", "set", self.ns_if, "up"])
        run([*nsip, "link", "set", "lo", "up"])

    def shape(self, rate_bytes: int) -> None:
        """tbf on both ends: host->ns (requests) and ns->host (blob bodies)."""
        # burst must hold at least rate/HZ bytes; 256 KiB covers HZ >= 100.
        tbf = [
            "root",
            "tbf",
            "rate",
            f"{rate_bytes * 8}bit",
            "burst",
            "256kb",
            "latency",
            "100ms",
        ]
        run(["tc", "qdisc", "replace", "dev", self.host_if, *tbf])
        run(["tc", "-n", self.ns, "qdisc", "replace", "dev", self.ns_if, *tbf])

    def counters(self) -> tuple[int, int]:
        """(rx, tx) bytes of the host end: rx came from upstream, tx went to it."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return (
            int((stats / "rx_bytes").read_text()),
            int((stats / "tx_bytes").read_text()),
        )

    def remove(self) -> list[str]:
        """Delete the veth pair and the namespace; what is left (should be [])."""
        if self.made_link:
            # Deleting one end deletes its peer.
            run(["ip", "link", "del", self.host_if], check=False)
        if self.made_ns:
            run(["ip", "netns", "del", self.ns], check=False)
        left = []
        if Path("/sys/class/net", self.host_if).exists():
            left.append(f"veth {self.host_if}")
        if self.ns in run(["ip", "netns", "list"], check=False).split():
            left.append(f"netns {self.ns}")
        return left


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def registry_config(root: Path, addr: str, remote: str | None = None) -> str:
    """distribution config: no auth, filesystem storage; proxy mode if remote."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {
            "level": "warn",
            "formatter": "json",
            "accesslog": {"disabled": False},
        },
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "maintenance": {"uploadpurging": {"enabled": False}},
            "delete": {"enabled": True},
        },
        "http": {"addr": addr, "secret": "docxy-benchmark-not-secret"},
    }
    if remote:
        config["proxy"] = {"remoteurl": remote}
    return json.dumps(config, indent=2)  # JSON is YAML


class Server(ManagedProcess):
    """A server on ``host:port``, registered in ``children`` before waiting."""

    def __init__(
        self,
        children: ProcessGroup,
        argv: Sequence[str],
        log_path: Path,
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(argv, log_path, env=env, cwd=log_path.parent)
        children.managed.append(self)
        self.host = host
        self.port = port
        self.hostport = f"{host}:{port}"
        self.url = f"http://{self.hostport}"

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(
                    f"{argv[0]} exited with {self.popen.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            return port_open(port, host)

        wait_until(ready, 30.0, f"{' '.join(argv[:5])} to listen on {host}:{port}")

    def entries(self) -> list[AccessLogEntry]:
        """The access log so far; a marker request proves it is complete."""
        marker = SYNC_PREFIX + uuid.uuid4().hex
        request(self.host, self.port, "GET", marker)
        wait_until(
            lambda: marker in self.log_text(), 10.0, f"marker in {self.log_path}"
        )
        return parse_access_log(self.log_text())


def start_registry(
    children: ProcessGroup,
    workdir: Path,
    name: str,
    host: str,
    port: int,
    remote: str | None = None,
    netns: str | None = None,
) -> Server:
    """``docker-registry serve`` on host:port (inside ``netns`` if given)."""
    cfg = workdir / f"{name}.yml"
    cfg.write_text(
        registry_config(workdir / f"{name}-storage", f"{host}:{port}", remote)
    )
    argv = [REGISTRY_BIN, "serve", str(cfg)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return Server(children, argv, workdir / f"{name}.log", host, port, NO_PROXY_ENV)


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain-HTTP request (no proxies, no redirects): status, headers, body."""
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


# --------------------------------------------------------------------------
# The image: tar layers of pseudo-random bytes, pushed with the upload API
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    seed: str = ""  # layers: regenerated from seed and payload; config: empty
    payload: int = 0  # layers: size of the one file in the tar
    data: bytes = b""  # config only


def layer_pieces(seed: str, payload: int) -> Iterator[bytes]:
    """An uncompressed tar with one file of ``payload`` pseudo-random bytes.

    Uncompressed (``...layer.v1.tar``) so nothing on the path can shrink it
    and no CPU goes to gzip; the bytes are regenerated, never held in memory.
    """
    info = tarfile.TarInfo(f"data/{seed}.bin")
    info.size = payload
    info.mtime = 0
    info.mode = 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    rng = random.Random(seed)
    left = payload
    while left:
        n = min(MiB, left)
        yield rng.randbytes(n)
        left -= n
    yield b"\0" * ((-payload) % 512 + 1024)


def layer_sizes(total_mib: int, layers: int) -> list[int]:
    """Split the total into layers of weights n, n-1, ..., 1 (largest first)."""
    weights = list(range(layers, 0, -1))
    total = total_mib * MiB
    sizes = [total * w // sum(weights) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def build_image(total_mib: int, layers: int) -> tuple[list[Blob], bytes]:
    """Layer and config blobs (config last) and the OCI manifest bytes."""
    blobs = []
    for i, payload in enumerate(layer_sizes(total_mib, layers)):
        seed = f"docxy-bench-slow-link/{i}"
        h = hashlib.sha256()
        size = 0
        for piece in layer_pieces(seed, payload):
            h.update(piece)
            size += len(piece)
        blobs.append(
            Blob("sha256:" + h.hexdigest(), size, OCI_LAYER_TAR, seed, payload)
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]},
        # Uncompressed layers: each diff_id is the layer's own digest.
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in blobs]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "docxy benchmark"}
            for _ in blobs
        ],
    }
    data = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    cfg = Blob(
        "sha256:" + hashlib.sha256(data).hexdigest(), len(data), OCI_CONFIG, data=data
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": cfg.media_type, "digest": cfg.digest, "size": cfg.size},
        "layers": [
            {"mediaType": b.media_type, "digest": b.digest, "size": b.size}
            for b in blobs
        ],
    }
    mbytes = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    return [*blobs, cfg], mbytes


def push_image(host: str, port: int, blobs: list[Blob], manifest: bytes) -> None:
    """POST + monolithic PUT ?digest= per blob (streamed), then the manifest."""
    for blob in blobs:
        status, headers, body = request(
            host,
            port,
            "POST",
            f"/v2/{REPO_NAME}/blobs/uploads/",
            headers={"Content-Length": "0"},
        )
        if status != 202:
            raise RuntimeError(f"upload POST answered {status}: {body[:300]!r}")
        loc = urllib.parse.urlsplit(headers.get("location", ""))
        query = f"{loc.query}&" if loc.query else ""
        target = f"{loc.path}?{query}digest={urllib.parse.quote(blob.digest)}"
        content: bytes | Iterator[bytes] = (
            layer_pieces(blob.seed, blob.payload) if blob.seed else blob.data
        )
        status, _, body = request(
            host,
            port,
            "PUT",
            target,
            body=content,
            headers={
                "Content-Length": str(blob.size),
                "Content-Type": "application/octet-stream",
            },
        )
        if status != 201:
            raise RuntimeError(f"upload PUT answered {status}: {body[:300]!r}")
    status, _, body = request(
        host,
        port,
        "PUT",
        f"/v2/{REPO_NAME}/manifests/{TAG}",
        body=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    if status != 201:
        raise RuntimeError(f"manifest PUT answered {status}: {body[:300]!r}")


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def measure_link(host: str, port: int, blob: Blob, limit: int) -> float:
    """MiB/s of one read of up to ``limit`` bytes of ``blob`` over the link."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        started = time.monotonic()
        conn.request("GET", f"/v2/{REPO_NAME}/blobs/{blob.digest}")
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"blob GET answered {resp.status}")
        got = 0
        while got < limit and (piece := resp.read(min(MiB, limit - got))):
            got += len(piece)
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    return got / MiB / elapsed


@dataclass
class Result:
    name: str
    seconds: float
    first: float  # seconds until the first client finished
    ok: int
    clients: int
    rx: int  # bytes upstream -> host over the veth
    tx: int  # bytes host -> upstream
    blob_gets: int
    blob_heads: int
    manifest_gets: int
    manifest_heads: int
    other: int
    failures: list[str]
    cpu: float | None = None  # CPU seconds of the mirror process in the case


def classify(entries: Sequence[AccessLogEntry]) -> tuple[int, int, int, int, int]:
    """(blob GETs, blob HEADs, manifest GETs, manifest HEADs, other requests)."""
    counts = [0, 0, 0, 0, 0]
    for e in entries:
        path = e.path.split("?", 1)[0]
        if BLOB_PATH.match(path):
            counts[0 if e.method == "GET" else 1 if e.method == "HEAD" else 4] += 1
        elif MANIFEST_PATH.match(path):
            counts[2 if e.method == "GET" else 3 if e.method == "HEAD" else 4] += 1
        else:
            counts[4] += 1
    return counts[0], counts[1], counts[2], counts[3], counts[4]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_pull(out: Path, blobs: Sequence[Blob]) -> str | None:
    """None if ``out`` (skopeo dir:) holds every blob at its size, else why not."""
    if not (out / "manifest.json").is_file():
        return f"{out}: no manifest.json"
    for b in blobs:
        f = out / b.digest.split(":", 1)[1]
        if not f.is_file() or f.stat().st_size != b.size:
            return f"{out}: {b.digest} missing or wrong size"
    return None


def pull_case(
    name: str,
    source: str,
    args: argparse.Namespace,
    children: ProcessGroup,
    link: SlowLink,
    upstream: Server,
    blobs: Sequence[Blob],
    workdir: Path,
    env: Mapping[str, str],
    mirror_pid: int | None = None,
) -> Result:
    """``args.clients`` concurrent skopeo pulls from ``source`` (host:port)."""
    outdir = workdir / "pulls" / re.sub(r"\W+", "-", name)
    outdir.mkdir(parents=True)
    home = Path(env["HOME"])
    before_log = len(upstream.entries())
    rx0, tx0 = link.counters()
    cpu0 = cpu_seconds(mirror_pid) if mirror_pid else 0.0
    started = time.monotonic()
    procs = []
    for i in range(args.clients):
        log = open(outdir / f"client-{i}.log", "wb")  # noqa: SIM115
        try:
            p = subprocess.Popen(
                [
                    SKOPEO,
                    "--policy",
                    str(home / "policy.json"),
                    "--registries-conf",
                    str(home / "registries.conf"),
                    "--registries.d",
                    str(home / "registries.d"),
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    f"docker://{source}/{REPO_NAME}:{TAG}",
                    f"dir:{outdir / f'client-{i}'}",
                ],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        children.popens.append(p)
        procs.append(p)
    ends: dict[int, float] = {}
    deadline = started + args.timeout
    while len(ends) < len(procs):
        for i, p in enumerate(procs):
            if i not in ends and p.poll() is not None:
                ends[i] = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: clients still running after {args.timeout}s")
        time.sleep(0.02)
    elapsed = max(ends.values()) - started
    rx1, tx1 = link.counters()
    cpu = cpu_seconds(mirror_pid) - cpu0 if mirror_pid else None
    for p in procs:
        children.popens.remove(p)
    failures = []
    for i, p in enumerate(procs):
        why = (
            f"client {i}: skopeo exited {p.returncode}: "
            + (outdir / f"client-{i}.log").read_text(errors="replace")[-300:]
            if p.returncode
            else check_pull(outdir / f"client-{i}", blobs)
        )
        if why:
            failures.append(why)
    # Counters first, then the log marker (its bytes belong to no case).
    counts = classify(upstream.entries()[before_log:])
    if not args.keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return Result(
        name,
        elapsed,
        min(ends.values()) - started,
        len(procs) - len(failures),
        len(procs),
        rx1 - rx0,
        tx1 - tx0,
        *counts,
        failures,
        cpu,
    )


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def report(results: dict[str, Result], image_bytes: int, rate_mib: float) -> None:
    print(
        f"\n{'case':<22} {'time s':>7} {'first s':>7} {'ok':>5} "
        f"{'MiB down':>9} {'MiB up':>7} {'images':>6} "
        f"{'blob GET':>8} {'HEAD':>5} {'mf GET':>6} {'HEAD':>5} {'other':>5} "
        f"{'CPU s':>5}"
    )
    for r in results.values():
        print(
            f"{r.name:<22} {r.seconds:7.1f} {r.first:7.1f} {r.ok:>2}/{r.clients:<2} "
            f"{r.rx / MiB:9.1f} {r.tx / MiB:7.2f} {r.rx / image_bytes:6.2f} "
            f"{r.blob_gets:8} {r.blob_heads:5} {r.manifest_gets:6} "
            f"{r.manifest_heads:5} {r.other:5} "
            + (f"{r.cpu:5.1f}" if r.cpu is not None else f"{'-':>5}")
        )
    print(
        "  (time: until the last client finished; first: until the first did; "
        "MiB down/up:\n   bytes over the veth incl. headers; images: MiB down / "
        "image size; request\n   counts from the upstream's access log: blob "
        "GET/HEAD, manifest GET/HEAD, other;\n   CPU s: CPU seconds of the mirror "
        "process during the case)"
    )
    for r in results.values():
        for f in r.failures[:3]:
            print(f"  FAILED {r.name}: {f}")

    def ratio(label: str, a: str, b: str, attr: str, note: str = "") -> None:
        if a in results and b in results:
            x = getattr(results[a], attr)
            y = getattr(results[b], attr)
            value = f"{x / y:.3f}" if y else "inf" if x else "n/a"
            print(f"  {label:<46} {value:>7}{note}")

    n = next(iter(results.values())).clients
    print("\nratios")
    ratio("time   Docxy cold / direct", "docxy cold", "direct", "seconds")
    ratio("time   Docxy cold / distribution cold", "docxy cold", "dist cold", "seconds")
    ratio("time   distribution cold / direct", "dist cold", "direct", "seconds")
    ratio("time   Docxy warm / distribution warm", "docxy warm", "dist warm", "seconds")
    ratio("time   Docxy warm / Docxy cold", "docxy warm", "docxy cold", "seconds")
    ratio(
        "link   Docxy cold / direct", "docxy cold", "direct", "rx", f"  (ideal 1/{n})"
    )
    ratio("link   distribution cold / direct", "dist cold", "direct", "rx")
    ratio("link   Docxy cold / distribution cold", "docxy cold", "dist cold", "rx")
    ratio(
        "blobs  upstream GETs Docxy cold / dist cold",
        "docxy cold",
        "dist cold",
        "blob_gets",
    )
    one = image_bytes / MiB / rate_mib
    print(
        f"  one copy of the image over the link at {rate_mib:.1f} MiB/s takes "
        f"{one:.1f} s; {n} copies {n * one:.1f} s"
    )


def tree_state() -> str:
    """The commit Docxy runs from, and whether its sources differ from it."""
    git = ["git", "-C", str(REPO)]
    head = run([*git, "rev-parse", "--short", "HEAD"], check=False).strip()
    changed = run([*git, "status", "--porcelain", "--", "docxy", "twisted"], False)
    return (head or "unknown commit") + (" + uncommitted changes" if changed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200, help="image size")
    parser.add_argument("--layers", type=int, default=4, help="layers in the image")
    parser.add_argument("--clients", type=int, default=8, help="concurrent pulls")
    parser.add_argument(
        "--rate-mib", type=float, default=20.0, help="link rate, MiB/s each way"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed per case"
    )
    parser.add_argument(
        "--docxy-arg",
        action="append",
        default=[],
        help="extra argument for twistd docxy (repeatable)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, pulls)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: it creates a network namespace and a veth pair")
        return 2
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            print(f"{tool} missing")
            return 2
    for path in (REGISTRY_BIN, SKOPEO):
        if not Path(path).exists():
            print(f"{path} missing")
            return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background by a shell, SIGINT may arrive ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    run_started = time.monotonic()
    link = SlowLink(os.getpid())  # creates nothing yet
    workdir = Path(tempfile.mkdtemp(prefix="docxy-bench-slow-"))
    children = ProcessGroup()
    try:
        link.create()
        print(
            f"netns {link.ns}: veth {link.host_if} {link.host_ip}/{link.prefixlen} "
            f"<-> {link.ns_if} {link.ns_ip}/{link.prefixlen}"
        )
        upstream = start_registry(
            children, workdir, "upstream", link.ns_ip, UPSTREAM_PORT, netns=link.ns
        )
        upstream_hostport = f"{link.ns_ip}:{UPSTREAM_PORT}"

        t0 = time.monotonic()
        blobs, manifest = build_image(args.size_mib, args.layers)
        image_bytes = sum(b.size for b in blobs) + len(manifest)
        push_image(link.ns_ip, UPSTREAM_PORT, blobs, manifest)
        print(
            f"upstream http://{upstream_hostport} (inside {link.ns}): pushed "
            f"{REPO_NAME}:{TAG}, {len(blobs) - 1} layers + config, "
            f"{image_bytes / MiB:.1f} MiB, unshaped, in {time.monotonic() - t0:.1f} s"
        )

        rate = int(args.rate_mib * MiB)
        link.shape(rate)
        biggest = max(blobs, key=lambda b: b.size)
        probe = min(biggest.size, 32 * MiB)
        measured = measure_link(link.ns_ip, UPSTREAM_PORT, biggest, probe)
        print(
            f"shaped with tbf to {args.rate_mib:g} MiB/s each way; one read of "
            f"{probe / MiB:.0f} MiB over it: {measured:.1f} MiB/s"
        )
        if not 0.5 * args.rate_mib <= measured <= 1.15 * args.rate_mib:
            raise RuntimeError(
                f"shaping not effective: {measured:.1f} MiB/s for a "
                f"{args.rate_mib:g} MiB/s link"
            )

        env = skopeo_env(workdir / "clients")
        (Path(env["HOME"]) / "registries.d").mkdir(exist_ok=True)
        # The direct case talks to the namespace's address: no dead proxy there.
        for key in ("NO_PROXY", "no_proxy"):
            env[key] = f"{env[key]},{link.ns_ip}"

        results: dict[str, Result] = {}

        def case(key: str, name: str, source: str, pid: int | None = None) -> None:
            r = pull_case(
                name, source, args, children, link, upstream, blobs, workdir, env, pid
            )
            results[key] = r
            print(
                f"  {name:<22} {r.seconds:6.1f} s, {r.ok}/{r.clients} ok, "
                f"{r.rx / MiB:7.1f} MiB down the link, {r.blob_gets} upstream blob GETs"
            )

        print(f"\n{args.clients} concurrent skopeo copy ... dir: per case")
        case("direct", "direct (no mirror)", upstream_hostport)
        docxy = Docxy(
            f"http://{upstream_hostport}",
            workdir / "docxy.log",
            extra_args=[
                "--cache-dir",
                str(workdir / "docxy-cache"),
                "--cache-max-size",
                f"{2 * args.size_mib + 100}M",
                *args.docxy_arg,
            ],
        )
        children.managed.append(docxy)
        print(f"  (Docxy from {REPO} at {tree_state()}, pid {docxy.pid})")
        case("docxy cold", "Docxy cold", docxy.hostport, docxy.pid)

        dist = start_registry(
            children,
            workdir,
            "dist-proxy",
            LOOPBACK,
            free_port(),
            remote=f"http://{upstream_hostport}",
        )
        case("dist cold", "distribution cold", dist.hostport, dist.pid)
        case("docxy warm", "Docxy warm", docxy.hostport, docxy.pid)
        case("dist warm", "distribution warm", dist.hostport, dist.pid)

        report(results, image_bytes, measured)
        warm = results["docxy warm"]
        asked = warm.manifest_gets + warm.manifest_heads
        if asked:
            print(
                f"\nnote: this Docxy does not cache manifests (yet): its warm pulls "
                f"asked the\nupstream for manifests {asked} times (small); "
                "blobs came from its cache."
            )
        else:
            print("\nnote: Docxy's warm pulls asked the upstream for no manifest.")
        return 0 if all(not r.failures for r in results.values()) else 1
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            children.stop_all()
        finally:
            left = link.remove()
            if args.keep:
                print(f"logs kept in {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            if left:
                print(f"WARNING: could not remove {', '.join(left)}", file=sys.stderr)
            else:
                print(
                    f"cleaned up ({link.ns}, {link.host_if}, processes); run took "
                    f"{time.monotonic() - run_started:.0f} s",
                    file=sys.stderr,
                )


if __name__ == "__main__":
    sys.exit(main())
