"""Disk trouble under a running, caching Docxy (issue 8, item 6).

A full cache disk (a small tmpfs, filled up), a cache directory remounted
read-only, or one removed: pulls go on uncached with the right bytes,
nothing partial is left in the cache, one warning is logged, and caching
resumes by itself when the disk is back. skopeo against the real registry,
and raw GETs against a blob server whose length Docxy only learns at the
end (so a fill runs into the full disk mid-way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.blob_counts import cached_blobs
from tests.support.blob_server import BlobServerProcess
from tests.support.digests import sha256_digest
from tests.support.docxy import AccessLog, Docxy, DocxyFactory
from tests.support.images import ImageInfo
from tests.support.processes import wait_until
from tests.support.registry import Upstream, fetch
from tests.support.skopeo import assert_pulled, skopeo_pull

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")

MIB = 1024 * 1024
TROUBLE = "does not take writes"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount tmpfs file systems of a given size; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # root without CAP_SYS_ADMIN (a container)
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(disk: Path) -> None:
    """``mount -o remount,ro``, once no file on ``disk`` is open for writing:
    while Docxy still writes what a pull taught it (a ledger batch, say)
    the kernel refuses with "mount point is busy" (seen in a full run)."""
    wait_until(
        lambda: (
            subprocess.run(
                ["mount", "-o", "remount,ro", str(disk)], capture_output=True
            ).returncode
            == 0
        ),
        30,
        f"{disk} to be remounted read-only",
    )


def fill_up(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def pull(docxy: Docxy, image: ImageInfo, workdir: Path) -> None:
    """skopeo copy through Docxy, checking every byte by digest."""
    out = workdir / f"pull-{len(list(workdir.iterdir()))}"
    skopeo_pull(docxy.hostport, image.ref, out)
    assert_pulled(out, image.blobs, image.digest)


def leftovers(cache: Path) -> list[Path]:
    """Partial files anywhere in the cache directory."""
    return [
        p
        for p in cache.rglob("*")
        if p.is_file() and (p.parent.name == "tmp" or p.name.endswith(".tmp"))
    ]


def warnings(docxy: Docxy) -> list[str]:
    return [line for line in docxy.log_text().splitlines() if TROUBLE in line]


def image_blobs(image: ImageInfo) -> set[str]:
    return set(image.blobs)


def test_a_full_disk_pulls_uncached_and_caching_resumes(
    docxy_factory: DocxyFactory,
    upstream: Upstream,
    small_disk: Callable[[int], Path],
    tmp_path: Path,
) -> None:
    cache = small_disk(8 * MIB)
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    filler = fill_up(cache)
    first = upstream.images["library/alpine:3.20"]
    second = upstream.images["someuser/tool:latest"]
    workdir = tmp_path / "pulls"
    workdir.mkdir()

    pull(docxy, first, workdir)
    pull(docxy, second, workdir)

    assert not set(cached_blobs(cache)) & (image_blobs(first) | image_blobs(second))
    assert leftovers(cache) == []
    assert len(warnings(docxy)) == 1, docxy.log_text()[-3000:]

    filler.unlink()
    log = AccessLog(docxy)
    pull(docxy, first, workdir)
    assert image_blobs(first) <= set(cached_blobs(cache)), log.dump()
    assert "caching resumes" in docxy.log_text()
    assert len(warnings(docxy)) == 1


@pytest.fixture
def chunked_blob(tmp_path: Path) -> Iterator[BlobServerProcess]:
    """A 12 MiB blob sent chunked: Docxy learns its length only at the end."""
    server = BlobServerProcess(tmp_path, 12 * MIB, framing="chunked")
    try:
        yield server
    finally:
        server.stop()


def test_a_fill_that_runs_out_of_disk_goes_on_from_upstream(
    docxy_factory: DocxyFactory,
    chunked_blob: BlobServerProcess,
    small_disk: Callable[[int], Path],
) -> None:
    cache = small_disk(6 * MIB)
    docxy = docxy_factory(
        chunked_blob.url, "--cache-dir", str(cache), library_prefix="off"
    )

    resp = fetch(docxy.url + chunked_blob.blob_path(), timeout=120)

    assert resp.status == 200
    assert len(resp.body) == 12 * MIB
    assert sha256_digest(resp.body) == chunked_blob.digest
    assert cached_blobs(cache) == {}
    assert leftovers(cache) == []
    assert len(warnings(docxy)) == 1, docxy.log_text()[-3000:]


def test_a_read_only_cache_directory_pulls_uncached_until_writable(
    docxy_factory: DocxyFactory,
    upstream: Upstream,
    small_disk: Callable[[int], Path],
    tmp_path: Path,
) -> None:
    cache = small_disk(64 * MIB)
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    cached = upstream.images["library/alpine:3.20"]
    other = upstream.images["someuser/tool:latest"]
    workdir = tmp_path / "pulls"
    workdir.mkdir()
    pull(docxy, cached, workdir)
    assert image_blobs(cached) <= set(cached_blobs(cache))

    remount_read_only(cache)
    try:
        pull(docxy, cached, workdir)  # served from the read-only cache
        pull(docxy, other, workdir)  # not cacheable now: uncached
        assert not image_blobs(other) & set(cached_blobs(cache))
        assert len(warnings(docxy)) == 1, docxy.log_text()[-3000:]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(cache)], check=True)

    pull(docxy, other, workdir)
    assert image_blobs(other) <= set(cached_blobs(cache))
    assert leftovers(cache) == []
    assert len(warnings(docxy)) == 1


def test_a_removed_cache_directory_is_recreated_and_pulls_go_on(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    image = upstream.images["library/alpine:3.20"]
    workdir = tmp_path / "pulls"
    workdir.mkdir()
    pull(docxy, image, workdir)
    assert image_blobs(image) <= set(cached_blobs(cache))

    # Docxy may still be writing (the ledger's writer thread) while the
    # directory goes: take the path away atomically, as `rm -rf` would
    # leave it, then delete what was under it (late writes land there).
    gone = tmp_path / "gone"
    cache.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    pull(docxy, image, workdir)

    assert image_blobs(image) <= set(cached_blobs(cache)), docxy.log_text()[-6000:]
    recreated = [line for line in docxy.log_text().splitlines() if "recreated" in line]
    assert len(recreated) == 1, docxy.log_text()[-3000:]
    assert leftovers(cache) == []
