"""Docxy next to its peers, in one run: blob paths, manifests, memory.

Not a test: it prints figures for a human (see benchmarks/README.md).

    .venv/bin/python benchmarks/peers.py [--size-mib 500] [--rounds 3]
        [--slow-clients 16] [--slow-rate 25M] [--wrk-seconds 5]
        [--only cold|no-cache|tls-upstream]

Upstream: a real distribution registry (Debian ``docker-registry``), no
auth, on 127.0.0.1, holding one blob of ``--size-mib`` and a manifest
tagged ``v1`` that names it. Each round reads the blob once with curl
(to /dev/null) through every variant, in an order that rotates per round:

- direct from the upstream;
- Docxy ``--no-cache``; Docxy cold (a fresh Docxy, empty cache dir, each
  round); Docxy warm (plain TCP: sendfile); Docxy warm over TLS;
- distribution in proxy mode, cold (fresh each round) and warm, and warm
  over TLS;
- nginx ``proxy_cache`` warm (Debian nginx, ``sendfile on``, one worker),
  and nginx as a plain ``proxy_pass`` (256 KiB buffers): what a C proxy
  makes of "no cache" on the same machine;
- Docxy cold and distribution cold from the same upstream over TLS (a
  second registry on its storage, self-signed): the path through Python
  a Docker Hub fill takes.

Every blob variant of Docxy runs ``--workers 1`` (one reactor, as nginx
runs one worker here); the manifest figures also show ``--workers 2``.
It prints the median of per-round ratios (Docxy/peer, as throughput: the
peer's time over Docxy's), the median MiB/s of each variant, and each
server's CPU seconds per GiB served (``/proc/<pid>/stat`` utime+stime
deltas over the transfer, a process and its children together) and
what the upstream sent for each read, in blobs (``/proc/<pid>/io``
wchar, until the variant is done: distribution's cold proxy GETs the
blob a second time for its storage after the client's, and is stopped
only once its storage holds it). Then
``wrk`` against cached manifests by tag and by digest (Docxy and
distribution warm), and Docxy's peak RSS while ``--slow-clients``
rate-limited curls read the blob at once, warm, cold and with no cache. The machine's
load average is printed at the start and the end: on a shared machine,
quote ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.blob_throughput import (  # noqa: E402
    REGISTRY_BIN,
    REPO_NAME,
    cpu_seconds,
    cpu_times,
    proc_status,
    push_blob,
    registry_config,
    reset_peak_rss,
    verify_through,
)
from tests.support.docxy import Docxy  # noqa: E402
from tests.support.processes import (  # noqa: E402
    LOOPBACK,
    ManagedProcess,
    ProcessGroup,
    free_port,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin") or "/usr/sbin/nginx"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Variant:
    """One way to get the blob: a URL and the server processes to charge."""

    name: str
    url: str = ""
    pids: list[int] = field(default_factory=list)
    # Before and after each timed read (the cold variants start fresh).
    prepare: Callable[[Variant], None] | None = None
    cleanup: Callable[[Variant], None] | None = None
    tls: bool = False
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)  # of cpu: system time
    # Bytes the upstream sent for each read (to its end, cleanup included).
    upstream: list[int] = field(default_factory=list)
    origin: int = 0  # the pid of its upstream, if not the plain one


def bytes_sent(pid: int) -> int:
    """What ``pid`` wrote to files and sockets (``sendfile`` included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no wchar in /proc/{pid}/io")


def stored_by(storage: Path, digest: str, size: int, timeout: float = 60.0) -> None:
    """Wait until distribution's storage holds the whole blob: its copy is
    a second upstream GET that goes on after the client's response."""
    hex_ = digest.split(":", 1)[1]
    data = storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if data.exists() and data.stat().st_size == size:
            return
        time.sleep(0.05)  # polling a benchmark peer, not a test
    print(f"  distribution had not stored {digest} after {timeout:.0f}s")


def cpu_of(pids: list[int]) -> float:
    """utime+stime of ``pids`` and their children (Docxy's workers)."""
    return float(sum(cpu_seconds(pid) for pid in _with_children(pids)))


def kernel_of(pids: list[int]) -> float:
    """stime alone of ``pids`` and their children."""
    return sum(cpu_times(pid)[1] for pid in _with_children(pids))


def _with_children(pids: list[int]) -> set[int]:
    return {p for x in pids for p in tree(x)}


def tree(pid: int) -> list[int]:
    try:
        return [pid, *(p for child in children_of(pid) for p in tree(child))]
    except OSError:
        return []


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def curl(url: str, size: int, tls: bool = False, rate: str | None = None) -> float:
    argv = ["curl", "-s", "--http1.1", "-o", "/dev/null"]
    argv += ["-w", "%{http_code} %{size_download} %{time_total}"]
    if tls:
        argv.append("-k")  # a throwaway self-signed certificate
    if rate:
        argv += ["--limit-rate", rate]
    out = subprocess.run([*argv, url], capture_output=True, check=False).stdout
    code, got, total = out.decode().split()
    if code != "200" or int(got) != size:
        raise RuntimeError(f"{url}: status {code}, {got} bytes")
    return float(total)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
            *("-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def proxy_registry(
    work: Path,
    name: str,
    upstream: str,
    tls: tuple[Path, Path] | None = None,
    upstream_ca: Path | None = None,
) -> tuple[ManagedProcess, str]:
    """distribution in proxy mode in front of ``upstream``, fresh storage;
    ``upstream_ca``: the certificate a TLS upstream's is (trusted through
    ``SSL_CERT_FILE``)."""
    port = free_port()
    storage = work / f"{name}-storage"
    shutil.rmtree(storage, ignore_errors=True)
    config = registry_config(storage, port)
    if tls is not None:
        config += f"  tls:\n    certificate: {tls[1]}\n    key: {tls[0]}\n"
    config += f"proxy:\n  remoteurl: {upstream}\n"
    path = work / f"{name}.yml"
    path.write_text(config)
    env = {"SSL_CERT_FILE": str(upstream_ca)} if upstream_ca else None
    process = ManagedProcess(
        [REGISTRY_BIN, "serve", str(path)], work / f"{name}.log", env=env
    )
    process.wait_for_port(port)
    scheme = "https" if tls else "http"
    return process, f"{scheme}://{LOOPBACK}:{port}"


def nginx_proxy(
    work: Path, upstream: str, cache: bool = True
) -> tuple[ManagedProcess, str]:
    """nginx in front of ``upstream``: ``proxy_cache`` on, or a plain
    ``proxy_pass`` with 256 KiB buffers (never spooled to disk)."""
    port = free_port()
    root = work / ("nginx" if cache else "nginx-proxy")
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    # As root, workers would run as nobody and not reach the cache directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    caching = (
        "proxy_cache blobs;\n      proxy_cache_valid 200 1d;"
        if cache
        else "proxy_buffers 4 256k;\n      proxy_buffer_size 256k;"
        "\n      proxy_max_temp_file_size 0;"
    )
    conf.write_text(f"""{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  proxy_cache_path {root}/cache levels=1:2 keys_zone=blobs:10m max_size=8g
                   inactive=1d use_temp_path=off;
  server {{
    listen {LOOPBACK}:{port};
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      {caching}
    }}
  }}
}}
""")
    process = ManagedProcess([NGINX, "-p", str(root), "-c", str(conf)], root / "out")
    process.wait_for_port(port)
    return process, f"http://{LOOPBACK}:{port}"


def push_manifest(port: int, layer: str, size: int) -> str:
    """A config blob and a manifest naming ``layer``, tagged v1; its digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    conn.request(
        "POST", f"/v2/{REPO_NAME}/blobs/uploads/", headers={"Content-Length": "0"}
    )
    resp = conn.getresponse()
    resp.read()
    location = resp.getheader("Location") or ""
    sep = "&" if "?" in location else "?"
    conn.request("PUT", f"{location}{sep}digest={config_digest}", body=config)
    conn.getresponse().read()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer,
                    "size": size,
                }
            ],
        }
    ).encode()
    conn.request(
        "PUT",
        f"/v2/{REPO_NAME}/manifests/v1",
        body=manifest,
        headers={"Content-Type": MANIFEST_TYPE},
    )
    resp = conn.getresponse()
    resp.read()
    if resp.status != 201:
        raise RuntimeError(f"manifest PUT answered {resp.status}")
    conn.close()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def wrk(url: str, seconds: int, pids: list[int]) -> tuple[float, float]:
    """(requests/s, server CPU seconds per 10k requests)."""
    cpu0 = cpu_of(pids)
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-H", f"Accept: {MANIFEST_TYPE}", url],
        capture_output=True,
        check=True,
    ).stdout.decode()
    cpu = cpu_of(pids) - cpu0
    rate = float(next(x for x in out.splitlines() if "Requests/sec" in x).split()[1])
    return rate, cpu / (rate * seconds / 10_000)


def page_cache_cost(work: Path, size: int, tries: int = 3) -> str:
    """CPU seconds per GiB to write ``size`` bytes into new page cache, as
    a cold fill does. On a VM that hands freed memory back to its host
    (free page reporting), each page written anew costs a fault in the
    host too, and this varies from write to write: a cold fill, whose
    client reads the growing file, pays it; a proxy streaming its client's
    copy straight from the upstream does not."""
    costs = []
    chunk = b"\0" * MiB
    for n in range(tries):
        path = work / f"page-cache-{n}"
        before = resource.getrusage(resource.RUSAGE_SELF)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(size // MiB):
                os.write(fd, chunk)
        finally:
            os.close(fd)
        after = resource.getrusage(resource.RUSAGE_SELF)
        os.sync()
        path.unlink()
        spent = after.ru_stime - before.ru_stime + after.ru_utime - before.ru_utime
        costs.append(spent / (size / GiB))
    costs.sort()
    return (
        f"{costs[len(costs) // 2]:.2f} CPU-s/GiB to write anew "
        f"(from {costs[0]:.2f} to {costs[-1]:.2f} in {tries} tries)"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# (Docxy variant, peer variant, target ratio or None)
PAIRS = (
    ("docxy warm", "nginx proxy_cache warm", 1.0),
    ("docxy warm", "distribution warm", None),
    ("docxy warm tls", "distribution warm tls", 0.8),
    ("docxy cold", "distribution cold", 1.0),
    ("docxy no cache", "direct", 0.8),
    ("nginx no cache", "direct", None),
    ("docxy no cache", "nginx no cache", None),
    ("docxy warm", "docxy no cache", None),
    ("docxy cold tls upstream", "distribution cold tls upstream", None),
)


# --only: the variants of one comparison, for a run of a few minutes.
ONLY = {
    "cold": ("direct", "docxy no cache", "docxy cold", "distribution cold"),
    "no-cache": ("direct", "docxy no cache", "nginx no cache"),
    "tls-upstream": ("docxy cold tls upstream", "distribution cold tls upstream"),
}


def rounds(
    variants: list[Variant], path: str, size: int, count: int, upstream: int
) -> None:
    for r in range(count):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            if v.prepare:
                v.prepare(v)
            origin = v.origin or upstream
            cpu0, sent0 = cpu_of(v.pids), bytes_sent(origin)
            kernel0 = kernel_of(v.pids)
            v.times.append(curl(v.url + path, size, v.tls))
            v.cpu.append(cpu_of(v.pids) - cpu0)
            v.kernel.append(kernel_of(v.pids) - kernel0)
            if v.cleanup:
                v.cleanup(v)
            v.upstream.append(bytes_sent(origin) - sent0)
            # A cold read leaves 500 MiB of dirty pages; written back later,
            # they would load whichever variant runs then.
            os.sync()
        print(f"  round {r + 1}/{count} done (load {load()})", flush=True)


def report(variants: list[Variant], size: int) -> None:
    by = {v.name: v for v in variants}
    print("\n| variant | median MiB/s | server CPU s/GiB | upstream sent, blobs |")
    print("|---|---|---|---|")
    for v in variants:
        rate = size / MiB / statistics.median(v.times)
        cpu = statistics.median(v.cpu) / (size / GiB)
        sent = statistics.median(v.upstream) / size
        print(f"| {v.name} | {rate:.0f} | {cpu:.2f} | {sent:.2f} |")
    print("\n| Docxy / peer (throughput) | median per round | target | each round |")
    print("|---|---|---|---|")
    for mine, peer, target in PAIRS:
        if mine not in by or peer not in by:
            continue
        ratios = [p / m for m, p in zip(by[mine].times, by[peer].times, strict=True)]
        goal = f">= {target}x" if target else "-"
        each = " ".join(f"{r:.2f}" for r in ratios)
        median = statistics.median(ratios)
        print(f"| {mine} / {peer} | {median:.2f}x | {goal} | {each} |")
    if "docxy cold" in by and "distribution cold" in by:
        # What moves cold on a VM whose new page cache costs host faults.
        docxy, dist = by["docxy cold"], by["distribution cold"]
        ratios = [p / m for m, p in zip(docxy.times, dist.times, strict=True)]
        rounds = sorted(zip(docxy.kernel, ratios, strict=True), reverse=True)
        each = ", ".join(f"{k:.2f} s: {r:.2f}x" for k, r in rounds)
        print(f"\ndocxy cold by its system CPU per read (most first): {each}")


def slow_clients(docxy: Docxy, path: str, size: int, count: int, rate: str) -> float:
    """Peak RSS (MiB) of ``docxy`` while ``count`` slow curls read the blob."""
    reset_peak_rss(docxy.pid)
    procs = [
        subprocess.Popen(
            [
                *("curl", "-s", "-o", "/dev/null", "--limit-rate", rate),
                *("-w", "%{http_code} %{size_download}", docxy.url + path),
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, proc_status(docxy.pid, "VmRSS"))
        time.sleep(0.2)  # sampling, not synchronisation
    results = [p.communicate()[0].decode() for p in procs]
    ok = sum(r == f"200 {size}" for r in results)
    if ok != count:
        print(f"  only {ok}/{count} slow clients got the whole blob: {results[:3]}")
    return float(max(peak, proc_status(docxy.pid, "VmHWM")) / MiB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-clients", type=int, default=16)
    parser.add_argument("--slow-rate", default="25M")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="run just these variants' rounds (no manifests, no RSS check)",
    )
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="docxy-peers-"))
    group = ProcessGroup()
    try:
        print(f"{os.cpu_count()} CPUs, load average {load()}")
        print(f"page cache: {page_cache_cost(work, size)}")
        up_port = free_port()
        (work / "upstream.yml").write_text(registry_config(work / "up", up_port))
        upstream = ManagedProcess(
            [REGISTRY_BIN, "serve", str(work / "upstream.yml")], work / "up.log"
        )
        group.managed.append(upstream)
        upstream.wait_for_port(up_port)
        up = f"http://{LOOPBACK}:{up_port}"
        digest = push_blob(up_port, size, b"peers")
        manifest = push_manifest(up_port, digest, size)
        path = f"/v2/{REPO_NAME}/blobs/{digest}"
        key, cert = self_signed(work)
        # The same storage over TLS: a cold fill from it goes through Python
        # (Docker Hub's case); only the kernel's splice needs plain TCP.
        tls_up_port = free_port()
        (work / "upstream-tls.yml").write_text(
            registry_config(work / "up", tls_up_port)
            + f"  tls:\n    certificate: {cert}\n    key: {key}\n"
        )
        tls_upstream = ManagedProcess(
            [REGISTRY_BIN, "serve", str(work / "upstream-tls.yml")],
            work / "up-tls.log",
        )
        group.managed.append(tls_upstream)
        tls_upstream.wait_for_port(tls_up_port)
        up_tls = f"https://{LOOPBACK}:{tls_up_port}"

        def docxy(name: str, *extra: str, workers: int = 1) -> Docxy:
            args = [*extra, "--workers", str(workers)]
            d = Docxy(up, work / f"{name}.log", extra_args=args)
            group.managed.append(d)
            return d

        nocache = docxy("nocache")
        tls_port = free_port()
        tls = f"ssl:{tls_port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}"
        warm = docxy("warm", "--cache-dir", str(work / "warm"), "--port", tls)
        warm.wait_for_port(tls_port)
        dist, dist_url = proxy_registry(work, "dist-warm", up)
        dist_tls, dist_tls_url = proxy_registry(work, "dist-tls", up, (key, cert))
        ngx, ngx_url = nginx_proxy(work, up)
        ngx_proxy, ngx_proxy_url = nginx_proxy(work, up, cache=False)
        group.managed += [dist, dist_tls, ngx, ngx_proxy]
        verify_through(warm, digest, size)  # the fill, hashed by the client too
        for url, secure in ((dist_url, False), (dist_tls_url, True), (ngx_url, False)):
            curl(url + path, size, secure)  # warm them up, untimed
        ngx_pids = [ngx.pid, *children_of(ngx.pid)]
        ngx_proxy_pids = [ngx_proxy.pid, *children_of(ngx_proxy.pid)]

        def cold_docxy(v: Variant) -> None:
            shutil.rmtree(work / "cold", ignore_errors=True)
            d = Docxy(
                up,
                work / "cold.log",
                extra_args=["--cache-dir", str(work / "cold"), "--workers", "1"],
            )
            v.url, v.pids, v.process = d.url, [d.pid], d  # type: ignore[attr-defined]
            group.managed.append(d)  # stopped on an error or Ctrl-C too
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", d.url + "/v2/"], check=True
            )

        def cold_dist(v: Variant) -> None:
            d, url = proxy_registry(work, "dist-cold", up)
            v.url, v.pids, v.process = url, [d.pid], d  # type: ignore[attr-defined]
            group.managed.append(d)

        def cold_docxy_tls_upstream(v: Variant) -> None:
            shutil.rmtree(work / "cold", ignore_errors=True)
            d = Docxy(
                up_tls,
                work / "cold-tls.log",
                extra_args=[
                    *("--cache-dir", str(work / "cold"), "--workers", "1"),
                    *("--upstream-ca", str(cert)),
                ],
            )
            v.url, v.pids, v.process = d.url, [d.pid], d  # type: ignore[attr-defined]
            group.managed.append(d)
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", d.url + "/v2/"], check=True
            )

        def cold_dist_tls_upstream(v: Variant) -> None:
            d, url = proxy_registry(work, "dist-cold-tls", up_tls, upstream_ca=cert)
            v.url, v.pids, v.process = url, [d.pid], d  # type: ignore[attr-defined]
            group.managed.append(d)

        def stop(v: Variant) -> None:
            v.process.stop()  # type: ignore[attr-defined]
            group.managed.remove(v.process)  # type: ignore[attr-defined]

        def stop_dist(v: Variant) -> None:
            stored_by(work / "dist-cold-storage", digest, size)
            stop(v)

        def stop_dist_tls(v: Variant) -> None:
            stored_by(work / "dist-cold-tls-storage", digest, size)
            stop(v)

        variants = [
            Variant("direct", up, [upstream.pid]),
            Variant("docxy no cache", nocache.url, [nocache.pid]),
            Variant("docxy cold", prepare=cold_docxy, cleanup=stop),
            Variant("docxy warm", warm.url, [warm.pid]),
            Variant(
                "docxy warm tls", f"https://{LOOPBACK}:{tls_port}", [warm.pid], tls=True
            ),
            Variant("distribution cold", prepare=cold_dist, cleanup=stop_dist),
            Variant("distribution warm", dist_url, [dist.pid]),
            Variant("distribution warm tls", dist_tls_url, [dist_tls.pid], tls=True),
            Variant("nginx proxy_cache warm", ngx_url, ngx_pids),
            Variant("nginx no cache", ngx_proxy_url, ngx_proxy_pids),
            Variant(
                "docxy cold tls upstream",
                prepare=cold_docxy_tls_upstream,
                cleanup=stop,
                origin=tls_upstream.pid,
            ),
            Variant(
                "distribution cold tls upstream",
                prepare=cold_dist_tls_upstream,
                cleanup=stop_dist_tls,
                origin=tls_upstream.pid,
            ),
        ]
        if args.only:
            variants = [v for v in variants if v.name in ONLY[args.only]]
        print(f"{args.rounds} rounds of a {args.size_mib} MiB blob, curl to /dev/null")
        rounds(variants, path, size, args.rounds, upstream.pid)
        report(variants, size)
        if args.only:
            print(f"\nload average at the end {load()}")
            return 0

        print("\n| manifest (wrk -t2 -c32) | req/s | server CPU s per 10k req |")
        print("|---|---|---|")
        two = docxy("two-workers", "--cache-dir", str(work / "two"), workers=2)
        for name, base, pids in (
            ("docxy 1 worker", warm.url, [warm.pid]),
            ("docxy 2 workers", two.url, [two.pid]),
            ("distribution", dist_url, [dist.pid]),
        ):
            for ref in ("v1", manifest):
                url = f"{base}/v2/{REPO_NAME}/manifests/{ref}"
                curl_manifest(url)
                rate, cpu = wrk(url, args.wrk_seconds, pids)
                kind = "tag" if ref == "v1" else "digest"
                print(f"| {name} by {kind} | {rate:.0f} | {cpu:.2f} |")
        two.stop()

        print(f"\npeak RSS, {args.slow_clients} clients at {args.slow_rate}/s each:")
        warm.stop()
        again = docxy("warm-again", "--cache-dir", str(work / "warm"))
        verify_through(again, digest, size)  # the first read after a start hashes
        slow = (path, size, args.slow_clients, args.slow_rate)
        print(f"  warm: {slow_clients(again, *slow):.0f} MiB")
        again.stop()
        cold = docxy("cold-slow", "--cache-dir", str(work / "cold-slow"))
        print(f"  cold: {slow_clients(cold, *slow):.0f} MiB")
        print(f"  no cache: {slow_clients(nocache, *slow):.0f} MiB")
        print(f"\nload average at the end {load()}")
        return 0
    finally:
        group.stop_all()
        if args.keep:
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def curl_manifest(url: str) -> None:
    """One untimed GET, so the manifest is cached where that applies."""
    subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-H", f"Accept: {MANIFEST_TYPE}", url],
        check=True,
    )


if __name__ == "__main__":
    sys.exit(main())
