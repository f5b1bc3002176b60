"""nginx and HAProxy in front of Docxy replicas, from the shipped configurations.

Why: what is tested must be what operators install. The files in
``deploy/balancer/`` are used as they are, but for the addresses: the
listener becomes a loopback port, the example replicas become the test's,
and (for the benchmark's comparison only) the hash can be swapped for
round-robin. Both run in the foreground and are stopped by PID.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from .processes import LOOPBACK, ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
BALANCER = REPO / "deploy" / "balancer"
NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin") or "/usr/sbin/haproxy"

_NGINX_SERVER = re.compile(
    r"^(\s*)server docxy-replica-\d+\.docxy-replicas:\S*(.*);\n", re.M
)
_HAPROXY_SERVER = re.compile(
    r"^(\s*)server docxy-replica-\d+ docxy-replica-\d+\.docxy-replicas:\S+\n", re.M
)


def _replace_servers(text: str, pattern: re.Pattern[str], lines: list[str]) -> str:
    """The example replicas' lines -> ours, where the first one was."""
    first = pattern.search(text)
    assert first is not None, f"no example replicas ({pattern.pattern}) to replace"
    indent = first.group(1)
    body = "".join(f"{indent}{line}\n" for line in lines)
    text = pattern.sub("", text)
    return text[: first.start()] + body + text[first.start() :]


def nginx_conf(replicas: Sequence[str], port: int, hashing: bool = True) -> str:
    """deploy/balancer/nginx.conf for ``replicas`` (host:port) on ``port``."""
    text = (BALANCER / "nginx.conf").read_text()
    params = _NGINX_SERVER.search(text)
    assert params is not None
    lines = [f"server {replica}{params.group(2)};" for replica in replicas]
    text = _replace_servers(text, _NGINX_SERVER, lines)
    text = text.replace("listen 80;", f"listen {LOOPBACK}:{port};")
    if not hashing:
        hash_line = r"^\s*hash \$docxy_affinity consistent;\n"
        text, n = re.subn(hash_line, "", text, count=1, flags=re.M)
        assert n == 1
    return text


def haproxy_cfg(replicas: Sequence[str], port: int, hashing: bool = True) -> str:
    """deploy/balancer/haproxy.cfg for ``replicas`` (host:port) on ``port``."""
    text = (BALANCER / "haproxy.cfg").read_text()
    lines = [f"server docxy-replica-{i} {r}" for i, r in enumerate(replicas)]
    text = _replace_servers(text, _HAPROXY_SERVER, lines)
    text = text.replace("bind :80", f"bind {LOOPBACK}:{port}")
    if not hashing:
        balance = r"^(\s*)balance hash .*$"
        text, n = re.subn(balance, r"\1balance roundrobin", text, count=1, flags=re.M)
        assert n == 1
        text = text.replace("hash-type consistent", "")
    return text


class Balancer(ManagedProcess):
    """A load balancer on a loopback port in front of Docxy replicas."""

    kind = ""

    def __init__(
        self,
        workdir: Path,
        replicas: Sequence[str],
        port: int | None = None,
        hashing: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.hostport = f"{LOOPBACK}:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = self.configure(workdir, replicas, hashing)
        super().__init__(argv, workdir / f"{self.kind}.log", cwd=workdir)
        self.wait_for_port(self.port)

    def configure(
        self, workdir: Path, replicas: Sequence[str], hashing: bool
    ) -> list[str]:
        """Write the configuration; the command line that runs it."""
        raise NotImplementedError


class Nginx(Balancer):
    kind = "nginx"

    def configure(
        self, workdir: Path, replicas: Sequence[str], hashing: bool
    ) -> list[str]:
        conf = workdir / "docxy.conf"
        conf.write_text(nginx_conf(replicas, self.port, hashing))
        temp = "".join(
            f"    {name}_temp_path {workdir / name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = workdir / "nginx.conf"
        main.write_text(
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {workdir / 'nginx.pid'};\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log {workdir / 'access.log'};\n{temp}"
            f"    include {conf};\n}}\n"
        )
        return [NGINX, "-p", str(workdir), "-c", str(main), "-e", "stderr"]


class HAProxy(Balancer):
    kind = "haproxy"

    def configure(
        self, workdir: Path, replicas: Sequence[str], hashing: bool
    ) -> list[str]:
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_cfg(replicas, self.port, hashing))
        return [HAPROXY, "-db", "-f", str(cfg)]


BALANCERS: dict[str, type[Balancer]] = {"nginx": Nginx, "haproxy": HAProxy}
BINARIES = {"nginx": NGINX, "haproxy": HAPROXY}
