"""docxy-cache on a real cache directory: list, size, verify, evict, prune, lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet import reactor

from docxy.cache.blob_store import BlobStore
from docxy.cache.cli import cache_dir, main
from docxy.cache.directory import CacheLock
from docxy.cache.disk_pool import DiskPool
from docxy.cache.manifest_store import ManifestStore
from tests.support.digests import sha256_digest

MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
)


def put_blob(store: BlobStore, data: bytes, last_used: float) -> str:
    digest = sha256_digest(data)
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    store.add(digest, temp)
    os.utime(store.path(digest), (last_used, last_used))
    return digest


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, list[str], str]:
    """Three blobs (old, middle, new: 100, 200, 300 bytes) and one manifest."""
    root = tmp_path / "cache"
    store = BlobStore(root, 10_000)
    blobs = [
        put_blob(store, bytes([n]) * size, 1_000_000.0 * (n + 1))
        for n, size in enumerate((100, 200, 300))
    ]
    manifest = sha256_digest(MANIFEST)
    ManifestStore(root, DiskPool(reactor)).write(
        manifest, MANIFEST, b"application/vnd.oci.image.manifest.v1+json"
    )
    (root / "tmp" / "sha256-cut.1.2").write_bytes(b"half a fill")
    return root, blobs, manifest


def run(
    capsys: pytest.CaptureFixture[str], root: Path, *args: str
) -> tuple[int, str, str]:
    code = main(["--cache-dir", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_is_least_recently_used_first(cache, capsys) -> None:
    root, blobs, manifest = cache
    code, out, err = run(capsys, root, "list", "--kind", "blob")
    assert code == 0 and err == ""
    lines = [line.split() for line in out.splitlines()]
    assert [(k, d, int(s)) for k, d, s, _ in lines] == [
        ("blob", blobs[0], 100),
        ("blob", blobs[1], 200),
        ("blob", blobs[2], 300),
    ]
    assert lines[0][3] == "1970-01-12T13:46:40Z"  # mtime 1e6: last use
    code, out, _ = run(capsys, root, "list", "--sort", "size")
    assert out.splitlines()[0].split()[1] == blobs[2]
    assert manifest in out


def test_size_counts_what_is_there(cache, capsys) -> None:
    root, _, _ = cache
    code, out, _ = run(capsys, root, "size")
    assert code == 0
    assert "blobs: 3 files, 600 bytes" in out
    assert f"manifests: 1 files, {len(MANIFEST)} bytes" in out
    assert "temp files: 1, 11 bytes" in out
    assert f"total: {600 + len(MANIFEST)} bytes" in out


def test_verify_finds_a_flipped_byte_and_delete_removes_it(cache, capsys) -> None:
    root, blobs, _ = cache
    path = BlobStore(root, 10_000).path(blobs[1])
    data = bytearray(path.read_bytes())
    data[50] ^= 1
    path.write_bytes(bytes(data))
    code, out, _ = run(capsys, root, "verify")
    assert code == 1
    assert out.splitlines() == [f"damaged blob {blobs[1]} ({path})"]
    assert path.exists()
    code, out, _ = run(capsys, root, "verify", "--delete")
    assert code == 0 and out.startswith(f"deleted blob {blobs[1]}")
    assert not path.exists()
    assert run(capsys, root, "verify")[0] == 0


def test_evict_removes_blobs_and_manifests(cache, capsys) -> None:
    root, blobs, manifest = cache
    code, out, _ = run(capsys, root, "evict", blobs[0], manifest)
    assert code == 0
    assert out.splitlines() == [
        f"evicted blob {blobs[0]}",
        f"evicted manifest {manifest}",
    ]
    assert ManifestStore(root, DiskPool(reactor)).read(manifest) is None
    code, _, err = run(capsys, root, "evict", blobs[0])
    assert code == 1 and "is not cached" in err
    assert run(capsys, root, "evict", "sha256:nothex")[0] == 2


def test_prune_to_a_size_goes_least_recently_used_first(cache, capsys) -> None:
    root, blobs, _ = cache
    code, out, _ = run(capsys, root, "prune", "--max-size", "300")
    assert code == 0
    assert out.splitlines() == [
        f"pruned blob {blobs[0]} (least recently used)",
        f"pruned blob {blobs[1]} (least recently used)",
    ]
    assert set(BlobStore(root, 10_000).entries) == {blobs[2]}
    assert list((root / "tmp").iterdir()) == []  # the crash's leftover too


def test_prune_unused_for_days(cache, capsys) -> None:
    root, blobs, manifest = cache
    code, out, _ = run(capsys, root, "prune", "--unused-for", "1")
    assert code == 0
    # Every blob's last use is in 1970; the manifest was written just now.
    assert {line.split()[2] for line in out.splitlines()} == set(blobs)
    assert manifest not in out


def test_deleting_commands_refuse_while_a_docxy_holds_the_lock(cache, capsys) -> None:
    root, blobs, _ = cache
    lock = CacheLock.acquire(root)
    try:
        for args in (
            ["prune", "--max-size", "1"],
            ["evict", blobs[0]],
            ["verify", "--delete"],
        ):
            code, out, err = run(capsys, root, *args)
            assert code == 2, args
            assert err == (
                f"docxy-cache: {root} is in use by a Docxy (pid {os.getpid()}): stop "
                "it first (it keeps the cache's index in memory)\n"
            )
        assert BlobStore(root, 10_000).entries.keys() >= set(blobs)
        code, out, err = run(capsys, root, "list")
        assert code == 0 and len(out.splitlines()) == 4
        assert err.startswith(
            f"docxy-cache: warning: a Docxy (pid {os.getpid()}) is using"
        )
    finally:
        lock.release()


def test_no_cache_there_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, tmp_path / "none", "size")
    assert (code, err) == (2, f"docxy-cache: no Docxy cache in {tmp_path / 'none'}\n")


def test_the_directory_is_found_as_docxy_finds_it(tmp_path: Path) -> None:
    config = tmp_path / "docxy.toml"
    config.write_text('cache-dir = "/srv/cache"\n')
    assert cache_dir(Path("/given"), str(config), {}) == Path("/given")
    assert cache_dir(None, str(config), {"DOCXY_CACHE_DIR": "/env"}) == Path("/env")
    assert cache_dir(None, str(config), {}) == Path("/srv/cache")
    assert cache_dir(None, None, {"DOCXY_CONFIG": str(config)}) == Path("/srv/cache")
