"""The cache's default home, its default bound, and its one-owner lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docxy.cache.blob_store import BlobStore
from docxy.cache.directory import (
    DEFAULT_MAX_SIZE,
    CacheDirError,
    CacheLock,
    default_cache_dir,
    default_max_size,
    holder,
)
from docxy.config import build_config


def test_default_dir_is_var_cache_for_root_and_xdg_for_users() -> None:
    assert default_cache_dir(0, {}) == Path("/var/cache/docxy")
    env = {"XDG_CACHE_HOME": "/x/cache", "HOME": "/home/u"}
    assert default_cache_dir(1000, env) == Path("/x/cache/docxy")
    # A relative XDG_CACHE_HOME is invalid by the spec: ignored.
    env = {"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}
    assert default_cache_dir(1000, env) == Path("/home/u/.cache/docxy")


def test_cache_is_on_by_default_and_no_cache_wins() -> None:
    assert build_config({}).cache_dir == default_cache_dir()
    assert build_config({}).cache_max_size is None
    assert build_config({"no-cache": True}).cache_dir is None


def test_no_cache_wins_over_a_cache_dir_in_the_file(tmp_path: Path) -> None:
    config = build_config({"no-cache": True}, {"cache-dir": str(tmp_path)})
    assert config.cache_dir is None


def test_default_bound_is_half_of_free_plus_cached_at_most_10g(
    tmp_path: Path,
) -> None:
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    assert default_max_size(tmp_path, 0) == min(DEFAULT_MAX_SIZE, free // 2)
    store = BlobStore(tmp_path, None)
    assert store.max_size == min(DEFAULT_MAX_SIZE, free // 2)
    assert BlobStore(tmp_path, 1234).max_size == 1234


def test_a_second_owner_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    lock = CacheLock.acquire(tmp_path / "c")
    assert holder(tmp_path / "c") == os.getpid()
    with pytest.raises(
        CacheDirError, match=rf"in use by another Docxy \(pid {os.getpid()}\)"
    ):
        CacheLock.acquire(tmp_path / "c")
    lock.release()
    assert holder(tmp_path / "c") is None
    CacheLock.acquire(tmp_path / "c").release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    """Even kill -9: flock is released by the kernel with the last descriptor."""
    code = (
        "import sys, os; from pathlib import Path; "
        "from docxy.cache.directory import CacheLock; "
        "CacheLock.acquire(Path(sys.argv[1])); print('locked', flush=True); "
        "sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "locked\n"
            assert holder(tmp_path) == child.pid
            with pytest.raises(CacheDirError):
                CacheLock.acquire(tmp_path)
        finally:
            child.kill()
            child.wait()
    CacheLock.acquire(tmp_path).release()


def test_an_unusable_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheDirError, match="cannot use"):
        CacheLock.acquire(tmp_path / "file" / "cache")


def test_a_cache_directory_docxy_creates_is_its_own(tmp_path: Path) -> None:
    # It holds private images' blobs, served only after an access check:
    # other local users must not read them from the disk instead.
    CacheLock.acquire(tmp_path / "new" / "cache").release()
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    CacheLock.acquire(existing).release()  # an operator's choice is kept
    assert existing.stat().st_mode & 0o777 == 0o755
