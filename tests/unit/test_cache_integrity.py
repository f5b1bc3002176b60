"""When a cached file is trusted without hashing: the seal recorded at write."""

from __future__ import annotations

import os
from pathlib import Path

from docxy.cache.blob_store import TOUCH_INTERVAL, BlobStore
from docxy.cache.integrity import Seal
from tests.support.digests import sha256_digest


def put(store: BlobStore, data: bytes) -> str:
    digest = sha256_digest(data)
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    store.add(digest, temp)
    return digest


def seal_now(store: BlobStore, digest: str) -> Seal:
    return Seal.of(os.stat(store.path(digest)))


def test_a_blob_its_fill_wrote_is_trusted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1 << 20)
    digest = put(store, b"a" * 1000)
    entry = store.entries[digest]
    assert store.trusted(entry, seal_now(store, digest))


def test_a_flipped_byte_ends_the_trust(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1 << 20)
    digest = put(store, b"a" * 1000)
    with store.path(digest).open("r+b") as f:
        f.seek(500)
        f.write(b"b")
    assert not store.trusted(store.entries[digest], seal_now(store, digest))


def test_a_file_replaced_under_its_name_is_not_trusted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1 << 20)
    digest = put(store, b"a" * 1000)
    other = tmp_path / "other"
    other.write_bytes(b"a" * 1000)
    os.replace(other, store.path(digest))
    assert not store.trusted(store.entries[digest], seal_now(store, digest))


def test_the_stores_own_lru_touch_keeps_the_trust(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 1 << 20)
    digest = put(store, b"a" * 1000)
    entry = store.entries[digest]
    entry.last_used -= 2 * TOUCH_INTERVAL
    before = seal_now(store, digest)
    assert store.get(digest) is entry
    after = seal_now(store, digest)
    assert after != before  # the touch changed mtime and ctime
    assert store.trusted(entry, after)


def test_after_a_restart_nothing_is_trusted_until_hashed(tmp_path: Path) -> None:
    digest = put(BlobStore(tmp_path, 1 << 20), b"a" * 1000)
    again = BlobStore(tmp_path, 1 << 20)
    entry = again.entries[digest]
    seal = seal_now(again, digest)
    assert not again.trusted(entry, seal)
    again.seal(entry, seal)  # a full read hashed it and it matched
    assert again.trusted(entry, seal)
