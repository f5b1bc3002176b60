"""DiskHealth on a fake clock: when the cache steps aside and comes back."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from docxy.cache import disk_health
from docxy.cache.disk_health import RESERVE, RETRY, DiskHealth


@pytest.fixture
def warnings() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []

    @implementer(ILogObserver)
    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == disk_health.__name__:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


class Disk:
    """What statvfs reports; free bytes and the read-only flag are settable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.free = 100 * 1024 * 1024
        self.read_only = False
        monkeypatch.setattr(os, "statvfs", self.statvfs)

    def statvfs(self, path: object) -> SimpleNamespace:
        return SimpleNamespace(
            f_flag=os.ST_RDONLY if self.read_only else 0,
            f_bavail=self.free,
            f_frsize=1,
        )


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


def test_a_full_disk_steps_aside_once_and_resumes_when_space_returns(
    tmp_path: Path, disk: Disk, warnings: list[LogEvent]
) -> None:
    health = DiskHealth(tmp_path, Clock())
    for name in ("blobs", "tmp", "manifests"):
        (tmp_path / name).mkdir()
    assert health.writable(10)
    disk.free = RESERVE + 5
    assert not health.writable(10)
    assert not health.writable(10)
    assert health.writable(0)  # what fits still may be written
    disk.free = RESERVE + 10
    assert health.writable(10)  # no waiting for a retry: statvfs sees space
    levels = [e["log_level"].name for e in warnings]
    assert levels == ["warn", "info"]


def test_a_write_that_hit_a_full_disk_needs_that_much_space_again(
    tmp_path: Path, disk: Disk
) -> None:
    health = DiskHealth(tmp_path, Clock())
    health.failed(OSError(errno.ENOSPC, "full"), needed=50)
    disk.free = RESERVE + 49
    assert not health.writable(0)
    disk.free = RESERVE + 50
    assert health.writable(0)


def test_read_only_is_seen_by_statvfs(tmp_path: Path, disk: Disk) -> None:
    health = DiskHealth(tmp_path, Clock())
    disk.read_only = True
    assert not health.writable()
    assert health.trouble is not None and health.trouble.errno == errno.EROFS
    disk.read_only = False
    assert health.writable()


def test_other_errors_are_retried_every_retry_seconds(
    tmp_path: Path, disk: Disk
) -> None:
    clock = Clock()
    health = DiskHealth(tmp_path, clock)
    health.failed(OSError(errno.EIO, "I/O error"))
    assert not health.writable()
    clock.advance(RETRY - 1)
    assert not health.writable()
    clock.advance(1)
    assert health.writable()  # a test write went through


def test_a_removed_directory_is_recreated(
    tmp_path: Path, disk: Disk, warnings: list[LogEvent]
) -> None:
    root = tmp_path / "cache"
    health = DiskHealth(root, Clock())
    assert health.writable()
    assert all((root / d).is_dir() for d in ("blobs", "tmp", "manifests"))
    assert [e["log_level"].name for e in warnings] == ["warn"]
