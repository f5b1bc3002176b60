"""The container clients and daemons a test module shares, set up once.

Why: dockerd, containerd and podman each need a private state directory
(short enough for unix sockets, kept by pytest for the daemon's log after
a failure), must be skipped where they are not installed, and must be
stopped by PID at the end, however the tests went.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from .clients import (
    CONTAINERD,
    CTR,
    DOCKER_CLI,
    DOCKERD,
    PODMAN,
    Containerd,
    Dockerd,
    Podman,
)


class Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound=Stoppable)
R = TypeVar("R")


def state_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A private state dir; unix socket paths are limited to 108 bytes."""
    base = tmp_path_factory.mktemp(name)
    if len(str(base)) > 60:
        base = Path(tempfile.mkdtemp(prefix=f"docxy-{name}-"))
    return base


def need(*binaries: str) -> None:
    for binary in binaries:
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed")


def running(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    binaries: Sequence[str],
    start: Callable[[Path], T],
) -> Iterator[T]:
    """For a fixture: ``start(state_dir)``, yielded, then stopped."""
    need(*binaries)
    client = start(state_dir(tmp_path_factory, name))
    try:
        yield client
    finally:
        client.stop()


def dockerd_through(
    tmp_path_factory: pytest.TempPathFactory, name: str, mirror_url: str
) -> Iterator[Dockerd]:
    """For a fixture: a dockerd whose ``registry-mirrors`` is ``mirror_url``."""
    yield from running(
        tmp_path_factory,
        name,
        (DOCKERD, DOCKER_CLI),
        lambda base: Dockerd(base, [mirror_url]),
    )


def containerd_through(
    tmp_path_factory: pytest.TempPathFactory, name: str, mirror_url: str
) -> Iterator[Containerd]:
    """For a fixture: a containerd whose docker.io ``hosts.toml`` names the mirror."""

    def start(base: Path) -> Containerd:
        daemon = Containerd(base)
        daemon.set_mirror(mirror_url)
        return daemon

    yield from running(tmp_path_factory, name, (CONTAINERD, CTR), start)


def podman_through(
    tmp_path_factory: pytest.TempPathFactory, name: str, mirror_hostport: str
) -> Iterator[Podman]:
    """For a fixture: a podman whose registries.conf mirror is the mirror."""
    yield from running(
        tmp_path_factory, name, (PODMAN,), lambda base: Podman(base, mirror_hostport)
    )


@contextlib.contextmanager
def every_client(mirror_url: str, mirror_hostport: str) -> Iterator[EveryClient]:
    """dockerd, containerd and podman, each of its own, all using one mirror.

    Skips where they cannot run (not root, not installed); stops them all.
    """
    if os.geteuid() != 0:
        pytest.skip("the container daemons need root")
    need(DOCKERD, DOCKER_CLI, CONTAINERD, CTR, PODMAN)
    # Short: unix sockets (108 bytes) and podman's runroot (50).
    base = Path(tempfile.mkdtemp(prefix="dx-"))
    started: list[Stoppable] = []
    try:
        dockerd = Dockerd(base / "dockerd", [mirror_url])
        started.append(dockerd)
        containerd = Containerd(base / "containerd")
        started.append(containerd)
        containerd.set_mirror(mirror_url)
        podman = Podman(base / "podman", mirror_hostport)
        started.append(podman)
        yield EveryClient(dockerd, containerd, podman)
    finally:
        for client in started:
            client.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclasses.dataclass
class EveryClient:
    dockerd: Dockerd
    containerd: Containerd
    podman: Podman


def at_once(*calls: Callable[[], R]) -> list[R]:
    """Run ``calls`` concurrently (threads); their results, or the first error."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))
