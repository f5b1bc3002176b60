"""What a cache directory holds, read from the files alone (no Docxy running).

The layout (see :mod:`docxy.cache.blob_store` and
:mod:`docxy.cache.manifest_store`) is its own index::

    DIR/lock                              the owner's flock (directory.py)
    DIR/blobs/<algorithm>/<hh>/<hex>      verified blobs; mtime = last use
    DIR/manifests/<algorithm>/<hh>/<hex>  verified manifests (+ ``.type``)
    DIR/ledger.sqlite                     tags and evidence (ledger.py)
    DIR/tmp/                              fills in flight, or cut by a crash

so ``docxy-cache`` needs no database to list, size or verify it (the
ledger is only read, for its count of tags).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..oci import Digest, is_valid_digest
from .ledger import DB_NAME

KINDS = ("blob", "manifest")
_DIRS = {"blob": "blobs", "manifest": "manifests"}


@dataclass(frozen=True)
class Item:
    """One cached blob or manifest file."""

    kind: str
    digest: str
    size: int
    last_used: float  # the file's mtime (blobs: bumped on hits)
    path: Path


def item_path(root: Path, kind: str, digest: str) -> Path:
    return Digest.parse(digest).path(root / _DIRS[kind])


def items(root: Path, kinds: tuple[str, ...] = KINDS) -> Iterator[Item]:
    """Every blob and manifest under ``root``, in no particular order."""
    for kind in kinds:
        base = root / _DIRS[kind]
        if not base.is_dir():
            continue
        for path in base.glob("*/*/*"):
            digest = f"{path.parent.parent.name}:{path.name}"
            if not is_valid_digest(digest) or not path.is_file():
                continue  # .type files, a manifest's temp file
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted meanwhile by a running Docxy
                continue
            yield Item(kind, digest, stat.st_size, stat.st_mtime, path)


def remove(item: Item) -> None:
    """Delete a cached item (a manifest with its content type)."""
    item.path.unlink(missing_ok=True)
    if item.kind == "manifest":
        item.path.with_suffix(".type").unlink(missing_ok=True)


def temp_files(root: Path) -> list[Path]:
    tmp = root / "tmp"
    return sorted(p for p in tmp.iterdir() if p.is_file()) if tmp.is_dir() else []


def tag_count(root: Path) -> int:
    ledger = root / DB_NAME
    if ledger.exists():
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
            ) as db:
                count: int = db.execute("SELECT count(*) FROM tags").fetchone()[0]
                return count
        except sqlite3.Error:
            return 0
    try:  # an older Docxy's
        return len(json.loads((root / "tags.json").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return 0


def verify(item: Item) -> bool:
    """Do the file's bytes still match its digest? (Reads the whole file.)"""
    try:
        return Digest.parse(item.digest).matches_file(item.path)
    except FileNotFoundError:
        return True  # evicted meanwhile: nothing damaged is left
