"""Manifests by digest: served from memory when recently used, read and
verified in the disk threads otherwise, never served damaged."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from docxy.cache.disk_pool import DiskPool
from docxy.cache.manifest_store import ManifestStore
from docxy.cache.memory_lru import BytesLRU
from tests.support.digests import sha256_digest

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
TYPE = b"application/vnd.oci.image.manifest.v1+json"
DIGEST = sha256_digest(BODY)


class _Inline:
    """A reactor whose callFromThread runs at once (the 'thread' is inline)."""

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        f(*args)


class _RecordingThreads(ThreadPool):
    """Runs each job inline and records which function it was."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, R], object] | None,  # noqa: N803 (ThreadPool's)
        func: Callable[P, R],
        *args: P.args,
        **kw: P.kwargs,
    ) -> None:
        self.calls.append(getattr(func, "__name__", repr(func)))
        assert onResult is not None
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())  # type: ignore[arg-type]
        else:
            onResult(True, result)


class RecordingDisk(DiskPool):
    def __init__(self) -> None:
        super().__init__(_Inline())
        self.recorded = _RecordingThreads()

    def threads(self) -> ThreadPool:
        return self.recorded


def done(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes without waiting (inline pool)."""
    results: list[T | Failure] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    assert results, "the coroutine waited on something"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result


def test_lru_bound_is_total_bytes_least_recently_used_out() -> None:
    lru = BytesLRU(max_bytes=100)
    lru.put("a", b"x" * 30, b"t" * 10)
    lru.put("b", b"x" * 30, b"t" * 10)
    assert lru.total == 80
    assert lru.get("a") is not None  # now b is the least recently used
    lru.put("c", b"x" * 30, b"t" * 10)
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.total == 80 <= lru.max_bytes
    lru.put("a", b"x" * 50, b"t" * 10)  # replaced, counted once
    assert lru.total == 100 and len(lru) == 2


def test_lru_never_keeps_an_item_over_its_bound() -> None:
    lru = BytesLRU(max_bytes=100)
    lru.put("a", b"x" * 50, b"")
    lru.put("big", b"x" * 101, b"")
    assert "big" not in lru and lru.get("a") == (b"x" * 50, b"")
    assert lru.total == 50


def test_a_put_writes_in_the_pool_and_a_hit_never_touches_it(tmp_path: Path) -> None:
    disk = RecordingDisk()
    store = ManifestStore(tmp_path, disk)
    done(store.put(DIGEST, BODY, TYPE))
    assert disk.recorded.calls == ["write"]
    assert (tmp_path / "manifests" / "sha256" / DIGEST[7:9] / DIGEST[7:]).exists()
    for _ in range(3):
        assert done(store.get(DIGEST)) == (BODY, TYPE)
    assert disk.recorded.calls == ["write"]


def test_a_miss_reads_in_the_pool_once_then_memory_serves(tmp_path: Path) -> None:
    ManifestStore(tmp_path, RecordingDisk()).write(DIGEST, BODY, TYPE)
    disk = RecordingDisk()
    store = ManifestStore(tmp_path, disk)  # a restart: nothing in memory
    assert done(store.get(DIGEST)) == (BODY, TYPE)
    assert done(store.get(DIGEST)) == (BODY, TYPE)
    assert disk.recorded.calls == ["read"]
    other = "sha256:" + "0" * 64
    assert done(store.get(other)) is None
    assert disk.recorded.calls == ["read", "read"]
    assert other not in store.memory


def test_a_damaged_file_is_never_served_as_its_digest(tmp_path: Path) -> None:
    ManifestStore(tmp_path, RecordingDisk()).write(DIGEST, BODY, TYPE)
    path = tmp_path / "manifests" / "sha256" / DIGEST[7:9] / DIGEST[7:]
    path.write_bytes(BODY + b" ")
    store = ManifestStore(tmp_path, RecordingDisk())
    assert done(store.get(DIGEST)) is None
    assert DIGEST not in store.memory
    assert not path.exists()  # discarded: the next pull fetches it again
    assert done(store.get(DIGEST)) is None


def test_a_write_the_disk_refuses_is_not_kept_in_memory(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, RecordingDisk())
    (tmp_path / "manifests" / "sha256").mkdir()
    (tmp_path / "manifests" / "sha256" / DIGEST[7:9]).write_bytes(b"in the way")
    with pytest.raises(OSError):
        done(store.put(DIGEST, BODY, TYPE))
    assert DIGEST not in store.memory


def test_concurrent_writes_of_one_manifest_both_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four clients missing one manifest at once write it from two disk
    threads: neither write may find its temporary file renamed by the other
    (an ENOENT there stepped the whole cache aside for ten seconds)."""
    import os
    import threading

    both_written = threading.Barrier(2, timeout=10)
    real_replace = os.replace

    def replace_when_both_wrote(src: Path, dst: Path) -> None:
        both_written.wait()  # each thread has its temp file on disk
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_when_both_wrote)
    store = ManifestStore(tmp_path, RecordingDisk())
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.write(DIGEST, BODY, TYPE)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.read(DIGEST) == (BODY, TYPE)
    assert not [p for p in tmp_path.rglob("*.tmp")]
