"""How often blobs and manifests were fetched, and which blobs a cache
directory holds.

The tests' measure of a mirror: each blob crosses each link once, and
what is cached is on disk under ``<cache-dir>/blobs/<algorithm>/<hh>/<hex>``.
Requests are ``(method, path)`` pairs, as the upstream registry's
``requests()`` and Docxy's access log give them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def _blob_of(method: str, path: str) -> str | None:
    """The digest a request GETs the blob of, or None."""
    bare = path.split("?", 1)[0]
    head, slash, digest = bare.rpartition("/")
    if method != "GET" or not slash or not head.endswith("/blobs"):
        return None
    return digest


def blob_gets(
    requests: Iterable[tuple[str, str]], blobs: Iterable[str]
) -> dict[str, int]:
    """GETs of each of ``blobs`` among ``requests`` (0 for one never asked)."""
    counts = dict.fromkeys(blobs, 0)
    for method, path in requests:
        digest = _blob_of(method, path)
        if digest in counts:
            counts[digest] += 1
    return counts


def blob_get_count(
    requests: Iterable[tuple[str, str]], blobs: Iterable[str] | None = None
) -> int:
    """GETs of ``blobs`` (of any blob, with None) among ``requests``, in all."""
    if blobs is not None:
        return sum(blob_gets(requests, blobs).values())
    return sum(1 for method, path in requests if _blob_of(method, path) is not None)


def cached_blobs(cache: Path) -> dict[str, Path]:
    """digest -> file, for every blob a cache directory holds."""
    return {
        f"{path.parent.parent.name}:{path.name}": path
        for path in (cache / "blobs").glob("*/*/*")
        if path.is_file()
    }


def manifest_get(method: str, target: str) -> bool:
    """A GET of a manifest by digest: what Docker Hub counts as a pull."""
    return method == "GET" and "/manifests/sha256:" in target


def manifest_gets(requests: Iterable[tuple[str, str]]) -> list[str]:
    """The paths of the manifest GETs (by tag or digest) among ``requests``."""
    return [
        path for method, path in requests if method == "GET" and "/manifests/" in path
    ]
