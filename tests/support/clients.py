"""Real container clients (dockerd, containerd's ctr, podman) pulling through Docxy.

Each helper keeps all of its state under a private base directory, listens
only on unix sockets inside it, and is stopped by PID. Every client process
gets ``NO_INTERNET_ENV``: all of them silently fall back to the real
registry-1.docker.io when the mirror fails, so a proxy that nothing listens on
makes such a fallback fail instead of leaving the machine, and a successful
pull proves the mirror served it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .processes import NO_INTERNET_ENV, ManagedProcess, wait_until

# The Debian engine's own CLI; the first `docker` on PATH may be another version.
DOCKER_CLI = "/usr/bin/docker"
DOCKERD = shutil.which("dockerd", path="/usr/sbin:/usr/bin") or "/usr/sbin/dockerd"
CONTAINERD = (
    shutil.which("containerd", path="/usr/bin:/usr/sbin") or "/usr/bin/containerd"
)
CTR = shutil.which("ctr", path="/usr/bin:/usr/sbin") or "/usr/bin/ctr"
PODMAN = shutil.which("podman", path="/usr/bin:/usr/sbin") or "/usr/bin/podman"

COMMAND_TIMEOUT = 120.0


class ClientError(RuntimeError):
    """A client command failed; carries its output for the test report."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]):
        self.result = result
        super().__init__(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command with the dead proxy; raise ClientError on failure."""
    full_env = dict(os.environ)
    full_env.update(NO_INTERNET_ENV)
    if env:
        full_env.update(env)
    result = subprocess.run(
        list(argv),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise ClientError(argv, result)
    return result


def _succeeds(argv: Sequence[str]) -> bool:
    try:
        return run(argv, check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base`` (deepest first), from mountinfo."""
    prefix = str(base.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(base: Path) -> None:
    """Undo mounts a daemon left below its private directory."""
    for point in mounts_under(base):
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", point], capture_output=True)


def pids_referencing(base: Path) -> list[int]:
    """PIDs whose command line names ``base``: children a daemon left behind.

    ``base`` is unique to this test run, so this never matches anything we
    did not start (e.g. dockerd's managed containerd or a containerd-shim).
    """
    needle = str(base.resolve()).encode()
    own = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_leftovers(base: Path) -> list[int]:
    """SIGKILL processes still referencing ``base``; return their PIDs."""
    pids = pids_referencing(base)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


class _Daemon:
    """Common start/stop for a daemon that owns ``base``."""

    name = "daemon"

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.process: ManagedProcess | None = None

    def _start(self, argv: Sequence[str], timeout: float = 60.0) -> None:
        self.process = ManagedProcess(
            argv, self.base / f"{self.name}.log", env=NO_INTERNET_ENV, cwd=self.base
        )

        def ready() -> bool:
            assert self.process is not None
            if not self.process.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.process.popen.returncode}:\n"
                    + self.process.log_text()[-4000:]
                )
            return self._ready()

        try:
            wait_until(ready, timeout, f"{self.name} to answer")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def stop(self) -> None:
        """SIGTERM (the daemon stops its own children), then clean up after it."""
        if self.process is not None:
            self.process.stop(timeout=30)
        kill_leftovers(self.base)
        unmount_under(self.base)


class Dockerd(_Daemon):
    """A private dockerd (with its own managed containerd) using ``mirrors``."""

    name = "dockerd"

    def __init__(self, base: Path, mirrors: Sequence[str]) -> None:
        super().__init__(base)
        self.sock = self.base / "docker.sock"
        self.host = f"unix://{self.sock}"
        # The CLI's config dir: keeps ~/.docker out of it.
        self.cli_config = self.base / "cli"
        self.cli_config.mkdir(exist_ok=True)
        config = {
            "registry-mirrors": list(mirrors),
            # Without this 20.10 writes /etc/docker/key.json.
            "deprecated-key-path": str(self.base / "key.json"),
        }
        self.config_file = self.base / "daemon.json"
        self.config_file.write_text(json.dumps(config))
        self._start(
            [
                DOCKERD,
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--data-root",
                str(self.base / "data"),
                "--exec-root",
                str(self.base / "exec"),
                "--pidfile",
                str(self.base / "dockerd.pid"),
                "--host",
                self.host,
                "--config-file",
                str(self.config_file),
            ]
        )

    def _ready(self) -> bool:
        return self.sock.exists() and _succeeds(self._cli("info"))

    def _cli(self, *args: str) -> list[str]:
        return [DOCKER_CLI, "--config", str(self.cli_config), "-H", self.host, *args]

    def docker(
        self, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self._cli(*args), check=check)

    def pull(self, ref: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.docker("pull", ref, check=check)

    def inspect(self, ref: str) -> dict[str, Any]:
        """``docker image inspect`` of one image."""
        out = self.docker("image", "inspect", ref).stdout
        images: list[dict[str, Any]] = json.loads(out)
        return images[0]

    def set_hub_credentials(self, user: str | None, password: str = "") -> None:
        """Docker Hub login in the CLI config (None: logged out).

        The CLI sends these with every Hub pull and dockerd passes them to
        the mirror's token realm; ``docker login <mirror>`` is never used.
        """
        auths = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            auths["https://index.docker.io/v1/"] = {"auth": token}
        (self.cli_config / "config.json").write_text(json.dumps({"auths": auths}))

    def remove(self, *refs: str) -> None:
        """Forget images so the next pull fetches them from the mirror again."""
        self.docker("image", "rm", "--force", *refs, check=False)


class Containerd(_Daemon):
    """A private containerd (CRI disabled), driven with ``ctr``."""

    name = "containerd"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.sock = self.base / "containerd.sock"
        self.hosts_dir = self.base / "certs.d"
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.base / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.base / "containerd.sock.ttrpc"}"\n'
            "[debug]\n"
            f'  address = "{self.base / "debug.sock"}"\n'
        )
        self._start([CONTAINERD, "--config", str(config)])

    def _ready(self) -> bool:
        return self.sock.exists() and _succeeds(
            [CTR, "--address", str(self.sock), "version"]
        )

    def set_mirror(
        self,
        mirror_url: str,
        registry: str = "docker.io",
        hosts_dir: Path | None = None,
    ) -> None:
        """hosts.toml for ``registry``: the mirror first, the registry as server.

        ``mirror_url`` may have a path (``http://host:port/ghcr``): containerd
        then sends ``/ghcr/v2/...``. ``hosts_dir`` defaults to ``self.hosts_dir``.
        """
        d = (hosts_dir or self.hosts_dir) / registry
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "{registry_server(registry)}"\n\n'
            f'[host."{mirror_url}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )

    def ctr(
        self, namespace: str, *args: str, check: bool = True, debug: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [CTR, "--address", str(self.sock), "--namespace", namespace]
        if debug:
            argv.append("--debug")
        return run([*argv, *args], check=check)

    def pull(
        self,
        namespace: str,
        ref: str,
        user: str | None = None,
        platform: str = "linux/amd64",
        check: bool = True,
        hosts_dir: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr image pull`` through hosts.toml; ``--debug`` logs each request URL."""
        args = [
            "image",
            "pull",
            "--hosts-dir",
            str(hosts_dir or self.hosts_dir),
            "--snapshotter",
            "native",
            "--platform",
            platform,
        ]
        if user is not None:
            args += ["--user", user]
        return self.ctr(namespace, *args, ref, check=check, debug=True)

    def image_digest(self, namespace: str, ref: str) -> str:
        """Target digest of ``ref`` from ``ctr image ls``."""
        out = self.ctr(namespace, "image", "ls", f"name=={ref}").stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return fields[2]
        raise LookupError(f"{ref} not in ctr image ls:\n{out}")


def registry_server(registry: str) -> str:
    """The real server of a registry name (Docker Hub's API host differs)."""
    if registry == "docker.io":
        return "https://registry-1.docker.io"
    return f"https://{registry}"


def registries_conf(mirrors: Mapping[str, Sequence[str]]) -> str:
    """registries.conf text: for each prefix, its insecure (http) mirrors.

    A mirror location may carry a path (``127.0.0.1:5000/ghcr``): podman,
    CRI-O and skopeo then put it in front of the repository name.
    """
    parts = []
    for prefix, locations in mirrors.items():
        server = registry_server(prefix).removeprefix("https://")
        parts.append(f'[[registry]]\nprefix = "{prefix}"\nlocation = "{server}"\n')
        for location in locations:
            parts.append(
                f'[[registry.mirror]]\nlocation = "{location}"\ninsecure = true\n'
            )
    return "\n".join(parts)


def request_urls(ctr_debug_output: str) -> list[tuple[str, str]]:
    """(method, url) of each HTTP request ctr's resolver logged with --debug."""
    found = []
    for line in ctr_debug_output.splitlines():
        if "do request" not in line:
            continue
        method = re.search(r"request\.method=(\S+)", line)
        url = re.search(r'url="?([^"\s]+)', line)
        if method and url:
            found.append((method.group(1), url.group(1)))
    return found


def response_headers(
    ctr_debug_output: str, header: str
) -> list[tuple[str, str | None]]:
    """(url, value of ``header`` or None) of each response ctr logged with --debug."""
    key = re.compile(rf'response\.header\.{re.escape(header.lower())}="?([^"\s]+)')
    found = []
    for line in ctr_debug_output.splitlines():
        if "fetch response received" not in line:
            continue
        url = re.search(r'url="?([^"\s]+)', line)
        value = key.search(line)
        found.append((url.group(1) if url else "", value.group(1) if value else None))
    return found


class Podman:
    """podman with private root/runroot/tmpdir and config files (no daemon)."""

    def __init__(self, base: Path, mirror_hostport: str) -> None:
        self.base = base.resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.root = self.base / "root"
        self.runroot = self.base / "runroot"
        self.tmpdir = self.base / "tmp"
        xdg = self.base / "xdg"
        for d in (self.root, self.runroot, self.tmpdir, xdg):
            d.mkdir(exist_ok=True)
        self.registries = self.base / "registries.conf"
        self.set_mirrors({"docker.io": [mirror_hostport]})
        storage = self.base / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        containers = self.base / "containers.conf"
        containers.write_text(
            '[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
        )
        # Not every machine has /etc/containers/policy.json.
        self.policy = self.base / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        # An empty authfile of our own keeps ${XDG_RUNTIME_DIR}/containers out.
        self.authfile = self.base / "auth.json"
        self.authfile.write_text('{"auths": {}}\n')
        self.env = {
            "CONTAINERS_REGISTRIES_CONF": str(self.registries),
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            "REGISTRY_AUTH_FILE": str(self.authfile),
            "XDG_RUNTIME_DIR": str(xdg),
            "XDG_CONFIG_HOME": str(xdg / "config"),
            "XDG_DATA_HOME": str(xdg / "data"),
            "TMPDIR": str(self.tmpdir),
        }

    def set_mirrors(self, mirrors: Mapping[str, Sequence[str]]) -> None:
        """Rewrite registries.conf: ``{prefix: [mirror location, ...]}``."""
        self.registries.write_text(registries_conf(mirrors))

    def set_credentials(self, host: str, user: str | None, password: str = "") -> None:
        """The authfile entry for ``host`` (None: none); podman sends a
        mirror only the credentials stored under the mirror's own host."""
        auths = json.loads(self.authfile.read_text())["auths"]
        auths.pop(host, None)
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            auths[host] = {"auth": token}
        self.authfile.write_text(json.dumps({"auths": auths}))

    def podman(
        self, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            PODMAN,
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--tmpdir",
            str(self.tmpdir),
            *args,
        ]
        return run(argv, env=self.env, check=check, cwd=self.base)

    def pull(
        self, ref: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.podman(
            "pull", "--signature-policy", str(self.policy), *args, ref, check=check
        )

    def inspect(self, ref: str) -> dict[str, Any]:
        images: list[dict[str, Any]] = json.loads(
            self.podman("image", "inspect", ref).stdout
        )
        return images[0]

    def remove(self, *refs: str) -> None:
        self.podman("image", "rm", "--force", *refs, check=False)

    def stop(self) -> None:
        """podman has no daemon; make sure nothing it spawned outlives the test."""
        kill_leftovers(self.base)
        unmount_under(self.base)
