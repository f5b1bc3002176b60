"""podman as the machine that builds and runs Docxy's image.

Why: the image is only proven by building it with the real script
(``deploy/image/build.sh``) and running it with a real container engine.
Everything lives in a private store under a directory of the test run
(images, containers, volumes, pods), so the machine's own podman state is
never touched and one removal at the end cleans it all. Containers use the
host network and listen on 127.0.0.1 only. The sandbox refuses raising
rlimits, so the engine's ``containers.conf`` lowers them (this covers
``podman kube play`` too), and ``runc`` is the runtime (``crun`` fails on
this machine's cgroup layout).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .clients import PODMAN, kill_leftovers, run, unmount_under
from .processes import port_open, wait_until

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "image" / "build.sh"
KUBERNETES = REPO / "deploy" / "kubernetes"
BUILD_TIMEOUT = 900.0
COMMAND_TIMEOUT = 120.0
# What building and running the image needs; tests/run.sh installs them.
TOOLS = ("podman", "mmdebstrap", "catatonit")
# The image's user (deploy/image/Containerfile).
DOCXY_UID = 10001


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# ``pytestmark`` of the modules that build or run the image.
NEEDS_ENGINE = [
    pytest.mark.skipif(os.geteuid() != 0, reason="podman builds and runs as root"),
    pytest.mark.skipif(bool(missing_tools()), reason=f"missing {missing_tools()}"),
]


def short_dir(prefix: str) -> Path:
    """podman refuses a runroot longer than 50 characters: not under pytest's."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def unique(prefix: str) -> str:
    """A container name no other test run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class EngineError(RuntimeError):
    """The image build failed, or a container exited when it should not."""


class Engine:
    """podman with a private store and configuration; tracks what it started."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.root = self.base / "root"
        self.runroot = self.base / "runroot"
        for d in (self.root, self.runroot, self.base / "tmp", self.base / "xdg"):
            d.mkdir(parents=True, exist_ok=True)
        storage = self.base / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        containers = self.base / "containers.conf"
        containers.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
            # Not the test run's dead proxy (NO_INTERNET_ENV) in containers.
            "http_proxy = false\n"
            "[engine]\n"
            'events_logger = "file"\n'
            'cgroup_manager = "cgroupfs"\n'
            'runtime = "runc"\n'
        )
        self.env = {
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            "XDG_RUNTIME_DIR": str(self.base / "xdg"),
            "TMPDIR": str(self.base / "tmp"),
        }
        self.containers: list[str] = []
        self.played: list[Path] = []

    def podman(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run([PODMAN, *args], env=self.env, check=check, timeout=timeout)

    def build(self, tag: str) -> float:
        """``deploy/image/build.sh TAG`` into this store; seconds it took."""
        start = time.monotonic()
        # The wheels are built with this interpreter's pip (and its index).
        result = subprocess.run(
            ["bash", str(BUILD_SH), tag],
            env={**os.environ, **self.env, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        (self.base / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise EngineError(
                f"build.sh exited {result.returncode}:\n{result.stderr[-6000:]}"
            )
        return time.monotonic() - start

    def inspect_image(self, ref: str) -> dict[str, Any]:
        docs: list[dict[str, Any]] = json.loads(
            self.podman("image", "inspect", ref).stdout
        )
        return docs[0]

    def start(
        self,
        name: str,
        image: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        volumes: Sequence[str] = (),
    ) -> str:
        """``podman run -d`` on the host network; the container is tracked."""
        self.containers.append(name)
        argv = ["run", "--detach", "--name", name, "--network", "host"]
        # No systemd timer for the HEALTHCHECK here (``podman healthcheck
        # run`` runs it).
        argv += ["--health-interval", "disable"]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            argv += ["--volume", volume]
        self.podman(*argv, image, *args)
        return name

    def state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(
            self.podman(
                "container", "inspect", "--format", "{{json .State}}", name
            ).stdout.strip()
        )
        return state

    def logs(self, name: str) -> str:
        result = self.podman("logs", name, check=False)
        return result.stdout + result.stderr

    def wait_for_port(self, name: str, port: int, timeout: float = 60.0) -> None:
        """Until Docxy in container ``name`` listens; fail early if it exits."""

        def ready() -> bool:
            if port_open(port):
                return True
            if not self.state(name).get("Running"):
                raise EngineError(f"container {name} exited:\n{self.logs(name)}")
            return False

        wait_until(ready, timeout, f"container {name} to listen on {port}")

    def wait_exit(self, name: str, timeout: float = 60.0) -> int:
        result = self.podman("wait", name, timeout=timeout)
        return int(result.stdout.strip().splitlines()[-1])

    def remove(self, name: str) -> None:
        self.podman("rm", "--force", "--time", "10", name, check=False)
        if name in self.containers:
            self.containers.remove(name)

    def kube_play(self, manifest: Path) -> None:
        self.played.append(manifest)
        self.podman("kube", "play", str(manifest))

    def kube_down(self, manifest: Path) -> None:
        self.podman("kube", "down", str(manifest), check=False)
        if manifest in self.played:
            self.played.remove(manifest)

    def close(self) -> None:
        """Stop what this engine started, then remove the whole private store."""
        for manifest in list(self.played):
            self.kube_down(manifest)
        for name in list(self.containers):
            self.remove(name)
        # Only this store's images and volumes (``system reset`` would also
        # touch the machine's network configuration).
        self.podman("volume", "rm", "--all", "--force", check=False)
        self.podman("rmi", "--all", "--force", check=False, timeout=300)
        kill_leftovers(self.base)
        unmount_under(self.base)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
