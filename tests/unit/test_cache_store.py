"""The blob store: restart scan, crash leftovers, LRU eviction, pins; ranges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docxy.cache.blob_store import BlobStore
from docxy.cache.hit import parse_range
from tests.support.digests import sha256_digest


def put(store: BlobStore, data: bytes, last_used: float | None = None) -> str:
    digest = sha256_digest(data)
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    entry = store.add(digest, temp)
    if last_used is not None:
        entry.last_used = last_used
        os.utime(store.path(digest), (last_used, last_used))
    return digest


def test_restart_keeps_entries_and_drops_partial_fills(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 10_000)
    digest = put(store, b"a" * 100)
    (store.tmp / "sha256-abc.partial").write_bytes(b"half a blob")  # kill -9
    again = BlobStore(tmp_path, 10_000)
    assert set(again.entries) == {digest}
    assert again.total == 100
    assert list(again.tmp.iterdir()) == []


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 250)
    old = put(store, b"o" * 100, last_used=1000.0)
    new = put(store, b"n" * 100, last_used=2000.0)
    third = put(store, b"t" * 100)
    assert set(store.entries) == {new, third}
    assert not store.path(old).exists()
    assert store.total == 200
    assert store.counters.evictions == 1  # docxy_cache_evictions_total


def test_lru_order_survives_restart(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1000)
    old = put(store, b"o" * 100, last_used=1000.0)
    put(store, b"n" * 100, last_used=2000.0)
    smaller = BlobStore(tmp_path, 150)
    assert old not in smaller.entries and len(smaller.entries) == 1


def test_an_entry_being_read_is_never_evicted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 150)
    old = put(store, b"o" * 100, last_used=1000.0)
    entry = store.get(old)
    assert entry is not None
    entry.last_used = 1000.0  # still the least recently used
    store.pin(entry)
    put(store, b"n" * 100)
    # The size bound holds, but not at the cost of the blob being read.
    assert set(store.entries) == {old}
    assert store.total <= 150
    store.unpin(entry)
    put(store, b"m" * 100)
    assert old not in store.entries


def test_a_file_removed_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1000)
    digest = put(store, b"x" * 10)
    store.path(digest).unlink()
    assert store.get(digest) is None
    assert store.total == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"bytes=0-9", (0, 10)),
        (b"bytes=90-", (90, 100)),
        (b"bytes=-10", (90, 100)),
        (b"bytes=95-200", (95, 100)),
        (b"bytes=100-", "unsatisfiable"),
        (b"bytes=-0", "unsatisfiable"),
        (b"bytes=0-1,5-6", None),
        (b"items=0-1", None),
    ],
)
def test_parse_range(header: bytes | None, expected: object) -> None:
    assert parse_range(header, 100) == expected
