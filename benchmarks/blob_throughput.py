"""Blob throughput and memory of Docxy in front of a real distribution registry.

Not a test: it prints figures for a human (see benchmarks/README.md).

    /tmp/venv/bin/python benchmarks/blob_throughput.py [--size-mib 512] [--runs 5]
        [--clients 32] [--rate 8M] [--slow-size-mib 128] [--docxy-arg ARG ...]

It starts ``docker-registry serve`` (no auth, filesystem storage in a temp
dir, 127.0.0.1), pushes a blob with the upload API (streamed from a
generator), starts ``twistd docxy`` in front of it, then measures

(a) curl's ``time_total`` for the blob direct vs through Docxy (median of
    ``--runs`` each; the first Docxy run is also shown on its own, since a
    caching mirror may answer later runs from disk);
(b) Docxy's peak RSS (VmHWM) while ``--clients`` rate-limited curls read a
    second blob concurrently, against Docxy's RSS at idle.

Every process it starts is stopped by PID on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.blob_server import iter_content  # noqa: E402
from tests.support.docxy import Docxy  # noqa: E402
from tests.support.processes import (  # noqa: E402
    LOOPBACK,
    ManagedProcess,
    ProcessGroup,
    free_port,
)

MiB = 1024 * 1024
REGISTRY_BIN = "/usr/bin/docker-registry"
REPO_NAME = "bench/blob"  # two components: no library/ prefixing applies


def registry_config(root: Path, port: int) -> str:
    """A plain distribution config: no auth, filesystem storage, loopback."""
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {LOOPBACK}:{port}
  secret: docxy-benchmark-not-secret
"""


def blob_digest(size: int, salt: bytes) -> str:
    h = hashlib.sha256()
    for piece in blob_pieces(size, salt):
        h.update(piece)
    return "sha256:" + h.hexdigest()


def blob_pieces(size: int, salt: bytes) -> Iterator[bytes]:
    """Deterministic pseudo-random content; ``salt`` makes distinct blobs."""
    first = True
    for piece in iter_content(size):
        if first and salt:
            piece = salt + piece[len(salt) :]
            first = False
        yield piece


def push_blob(port: int, size: int, salt: bytes) -> str:
    """POST an upload, then one monolithic PUT ?digest= streamed from a generator."""
    digest = blob_digest(size, salt)
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=300)
    try:
        conn.request("HEAD", f"/v2/{REPO_NAME}/blobs/{digest}")
        head = conn.getresponse()
        head.read()
        if head.status == 200:
            return digest
        conn.request(
            "POST", f"/v2/{REPO_NAME}/blobs/uploads/", headers={"Content-Length": "0"}
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"upload POST answered {resp.status}")
        location = urllib.parse.urlsplit(resp.getheader("Location") or "")
        query = f"{location.query}&" if location.query else ""
        target = f"{location.path}?{query}digest={urllib.parse.quote(digest)}"
        conn.request(
            "PUT",
            target,
            body=blob_pieces(size, salt),
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            },
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"upload PUT answered {resp.status}: {body[:300]!r}")
        return digest
    finally:
        conn.close()


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def cpu_times(pid: int) -> tuple[float, float]:
    """utime and stime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``."""
    return sum(cpu_times(pid))


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux >= 4.0, needs permission); False if not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def curl_once(url: str, expect_size: int, children: ProcessGroup, *extra: str) -> float:
    """Seconds curl took for the whole body (checks status and size)."""
    p = subprocess.Popen(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            *extra,
            url,
        ],
        stdout=subprocess.PIPE,
    )
    children.popens.append(p)
    out, _ = p.communicate()
    children.popens.remove(p)
    code, size, total = out.decode().split()
    if p.returncode != 0 or code != "200" or int(size) != expect_size:
        raise RuntimeError(f"curl {url}: rc={p.returncode} status={code} bytes={size}")
    return float(total)


def verify_through(docxy: Docxy, digest: str, size: int) -> None:
    """One untimed read through Docxy, hashed: we benchmark a correct path."""
    conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=300)
    try:
        conn.request("GET", f"/v2/{REPO_NAME}/blobs/{digest}")
        resp = conn.getresponse()
        h = hashlib.sha256()
        got = 0
        while piece := resp.read(1024 * 1024):
            h.update(piece)
            got += len(piece)
    finally:
        conn.close()
    if resp.status != 200 or got != size or "sha256:" + h.hexdigest() != digest:
        raise RuntimeError(
            f"through Docxy: status {resp.status}, {got} bytes, sha256:{h.hexdigest()}"
        )


def fmt_rate(size: int, seconds: float) -> str:
    return f"{size / MiB / seconds:8.1f} MiB/s ({seconds:.3f} s)"


def throughput(
    args: argparse.Namespace,
    children: ProcessGroup,
    reg_url: str,
    docxy: Docxy,
    digest: str,
    size: int,
) -> None:
    """(a) direct vs through Docxy, median of ``runs`` each."""
    path = f"/v2/{REPO_NAME}/blobs/{digest}"
    direct = [curl_once(reg_url + path, size, children) for _ in range(args.runs)]
    cpu0 = cpu_seconds(docxy.pid)
    through = [curl_once(docxy.url + path, size, children) for _ in range(args.runs)]
    cpu = cpu_seconds(docxy.pid) - cpu0
    d_med, t_med = statistics.median(direct), statistics.median(through)
    print(f"\n(a) one {size // MiB} MiB blob, curl time_total, {args.runs} runs each")
    print(f"  direct from registry, median : {fmt_rate(size, d_med)}")
    print(f"  through Docxy, median        : {fmt_rate(size, t_med)}")
    print(f"  through Docxy, first run     : {fmt_rate(size, through[0])}")
    print(f"  all direct  (s): {' '.join(f'{t:.3f}' for t in direct)}")
    print(f"  all through (s): {' '.join(f'{t:.3f}' for t in through)}")
    print(f"  ratio through/direct (throughput): {d_med / t_med:.2f}")
    gib = size * args.runs / (1024 * MiB)
    print(f"  Docxy CPU: {cpu:.2f} s for {gib:.2f} GiB ({cpu / gib:.2f} s/GiB)")


def slow_clients(
    args: argparse.Namespace,
    children: ProcessGroup,
    docxy: Docxy,
    digest: str,
    size: int,
    idle_rss: int,
) -> None:
    """(b) peak RSS with many concurrent rate-limited readers."""
    url = f"{docxy.url}/v2/{REPO_NAME}/blobs/{digest}"
    reset_ok = reset_peak_rss(docxy.pid)
    before_hwm = proc_status(docxy.pid, "VmHWM")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(proc_status(docxy.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    clients = []
    for _ in range(args.clients):
        p = subprocess.Popen(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--limit-rate",
                args.rate,
                "-w",
                "%{http_code} %{size_download}",
                url,
            ],
            stdout=subprocess.PIPE,
        )
        children.popens.append(p)
        clients.append(p)
    results = []
    for p in clients:
        out, _ = p.communicate()
        children.popens.remove(p)
        results.append((p.returncode, out.decode()))
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    # VmHWM is kept from per-thread counters that lag a little: take the
    # larger of it and the highest VmRSS sample.
    peak = max([proc_status(docxy.pid, "VmHWM"), *samples])
    ok = sum(1 for rc, out in results if rc == 0 and out == f"200 {size}")
    print(
        f"\n(b) {args.clients} concurrent clients, curl --limit-rate {args.rate}, "
        f"{size // MiB} MiB blob each"
    )
    print(
        f"  completed intact: {ok}/{args.clients} in {elapsed:.1f} s "
        f"(aggregate {size * ok / MiB / elapsed:.1f} MiB/s)"
    )
    if ok != args.clients:
        print(f"  failures: {[r for r in results if r != (0, f'200 {size}')][:5]}")
    print(f"  Docxy RSS at idle            : {idle_rss / MiB:7.1f} MiB")
    if reset_ok:
        print(f"  Docxy peak RSS (VmHWM) in (b): {peak / MiB:7.1f} MiB")
    else:
        print(
            "  Docxy peak RSS (VmHWM, whole run; reset failed, was "
            f"{before_hwm / MiB:.1f} before (b)): {peak / MiB:7.1f} MiB"
        )
    if samples:
        print(
            f"  Docxy RSS sampled in (b)     : max {max(samples) / MiB:.1f} MiB, "
            f"median {statistics.median(samples) / MiB:.1f} MiB"
        )
    print(
        f"  peak / idle: {peak / idle_rss:.2f}x; "
        f"extra per client: {(peak - idle_rss) / args.clients / MiB:.2f} MiB; "
        f"peak vs data served: {peak / (size * args.clients):.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="blob for (a)")
    parser.add_argument("--runs", type=int, default=5, help="curl runs per path in (a)")
    parser.add_argument(
        "--clients", type=int, default=32, help="concurrent readers in (b)"
    )
    parser.add_argument(
        "--rate", default="8M", help="curl --limit-rate per client in (b)"
    )
    parser.add_argument("--slow-size-mib", type=int, default=128, help="blob for (b)")
    parser.add_argument(
        "--docxy-arg",
        action="append",
        default=[],
        help="extra argument for twistd docxy (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background by a shell, SIGINT may arrive ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    workdir = Path(tempfile.mkdtemp(prefix="docxy-bench-"))
    children = ProcessGroup()
    try:
        reg_port = free_port()
        cfg = workdir / "registry.yml"
        cfg.write_text(registry_config(workdir / "storage", reg_port))
        registry = ManagedProcess(
            [REGISTRY_BIN, "serve", str(cfg)], workdir / "registry.log"
        )
        children.managed.append(registry)
        registry.wait_for_port(reg_port)
        reg_url = f"http://{LOOPBACK}:{reg_port}"

        size = args.size_mib * MiB
        slow_size = args.slow_size_mib * MiB
        t0 = time.monotonic()
        digest = push_blob(reg_port, size, b"")
        slow_digest = push_blob(reg_port, slow_size, b"slow-clients")
        print(
            f"registry {reg_url}: pushed {args.size_mib} MiB {digest} and "
            f"{args.slow_size_mib} MiB {slow_digest} in {time.monotonic() - t0:.1f} s"
        )
        docxy = Docxy(reg_url, workdir / "docxy.log", extra_args=args.docxy_arg)
        children.managed.append(docxy)
        # One small request so idle RSS includes the code paths a request loads.
        conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=30)
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        conn.close()
        idle_rss = proc_status(docxy.pid, "VmRSS")
        print(
            f"docxy {docxy.url} (pid {docxy.pid}), idle RSS {idle_rss / MiB:.1f} MiB, "
            f"{os.cpu_count()} CPUs"
        )

        verify_through(docxy, digest, size)
        print("  (one read through Docxy hashed: digest verified)")
        throughput(args, children, reg_url, docxy, digest, size)
        print(
            f"  Docxy VmHWM after (a): {proc_status(docxy.pid, 'VmHWM') / MiB:.1f} MiB"
        )
        slow_clients(args, children, docxy, slow_digest, slow_size, idle_rss)
        return 0
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
