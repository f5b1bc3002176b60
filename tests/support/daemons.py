"""The container clients and daemons a test module shares, set up once.

Why: dockerd, containerd and podman each need a private state directory
(short enough for unix sockets, kept by pytest for the daemon's log after
a failure), must be skipped where they are not installed, and must be
stopped by PID at the end, however the tests went.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest


class Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound=Stoppable)


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
