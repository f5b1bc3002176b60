"""Content-addressed blob files on disk, bounded in size, least recently used out.

The filesystem is the index: ``blobs/<algorithm>/<hh>/<hex>`` exists only
once its bytes were verified against the digest (written under ``tmp/`` and
renamed), so a crash or ``kill -9`` mid-fill leaves nothing that is ever
served, and a restart rebuilds the index by scanning. Last use is the
file's mtime, bumped on hits, so LRU order survives restarts too.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from ..oci import Digest, is_valid_digest
from .counters import Counters
from .directory import EVICT_LOCK_NAME, default_max_size, turn
from .integrity import Seal

log = Logger()

# Bump a hit file's mtime at most this often: one utime per hit is waste.
TOUCH_INTERVAL = 60.0


@dataclass
class Entry:
    """One verified blob file; ``readers`` pins it against eviction while it is sent."""

    digest: str
    size: int
    last_used: float
    readers: int = 0
    # Set while the file is known to hold its digest's bytes (see integrity).
    seal: Seal | None = None


class BlobStore:
    """The blob files and their in-memory index, kept under ``max_size`` by LRU.

    The index is rebuilt by scanning the files at start (the filesystem is
    the index), so it survives restarts and a crash leaves nothing in it.
    """

    def __init__(
        self, root: Path, max_size: int | None, counters: Counters | None = None
    ) -> None:
        """``max_size`` None: the default bound for this disk (see directory)."""
        self.root = root
        self.counters = counters or Counters()
        self.max_size = max_size or 0
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.entries: dict[str, Entry] = {}
        self.total = 0
        self._open(max_size)

    def _open(self, max_size: int | None) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        from .fill_lock import clean_temp  # (it imports this module)

        clean_temp(self.tmp)  # fills cut short by a crash, not other workers'
        for digest, (size, mtime) in self.scan().items():
            self.entries[digest] = Entry(digest, size, mtime)
            self.total += size
        if max_size is None:
            self.max_size = default_max_size(self.root, self.total)
        self.evict()

    def scan(self) -> dict[str, tuple[int, float]]:
        """digest -> (size, mtime) of every blob on disk (a disk thread's job,
        but at start)."""
        found = {}
        for path in self._files():
            digest = f"{path.parent.parent.name}:{path.name}"
            if not is_valid_digest(digest):
                continue
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                stat = path.stat()
                found[digest] = (stat.st_size, stat.st_mtime)
        return found

    def refresh(self, found: dict[str, tuple[int, float]]) -> None:
        """Take in what the other workers of this cache added, used and
        evicted (a :meth:`scan`), then keep to the bound for all of them."""
        for digest, entry in list(self.entries.items()):
            if digest not in found and not entry.readers:
                self._forget(entry)
        for digest, (size, mtime) in found.items():
            known = self.entries.get(digest)
            if known is None:
                self.entries[digest] = Entry(digest, size, mtime)
                self.total += size
            else:  # their hits bump the file's mtime
                known.last_used = max(known.last_used, mtime)
        self.evict()

    def _files(self) -> Iterator[Path]:
        for algorithm in self.blobs.iterdir():
            for prefix in algorithm.iterdir():
                yield from prefix.iterdir()

    def path(self, digest: str) -> Path:
        return Digest.parse(digest).path(self.blobs)

    def temp_path(self, digest: str) -> Path:
        """The same in every worker: its lock is the fill's (fill_lock)."""
        return self.tmp / f"{digest.replace(':', '-')}.fill"

    def get(self, digest: str) -> Entry | None:
        """The entry for ``digest``, marked used now; None on a miss."""
        entry = self.entries.get(digest) or self._adopt(digest)
        if entry is None:
            return None
        if not self.path(digest).exists():  # removed behind our back
            self._forget(entry)
            return None
        now = time.time()
        if now - entry.last_used > TOUCH_INTERVAL:
            self._touch(entry, now)
        entry.last_used = now
        return entry

    def _touch(self, entry: Entry, now: float) -> None:
        """Bump the file's mtime (LRU order); a seal that held still holds."""
        path = self.path(entry.digest)
        with contextlib.suppress(OSError):
            held = entry.seal is not None and Seal.of(os.stat(path)) == entry.seal
            os.utime(path, (now, now))
            entry.seal = Seal.of(os.stat(path)) if held else None

    def seal(self, entry: Entry, seal: Seal) -> None:
        """The file was hashed whole and matched while it had ``seal``."""
        if self.entries.get(entry.digest) is entry:
            entry.seal = seal

    def trusted(self, entry: Entry, seal: Seal) -> bool:
        """May the file that now has ``seal`` be served without hashing?"""
        return entry.seal is not None and entry.seal == seal

    def _adopt(self, digest: str) -> Entry | None:
        """A blob another worker of this cache added (its file is the index)."""
        try:
            stat = self.path(digest).stat()
        except OSError:
            return None
        entry = self.entries[digest] = Entry(digest, stat.st_size, stat.st_mtime)
        self.total += stat.st_size
        return entry

    def add(self, digest: str, temp: Path) -> Entry:
        """Make a verified temp file visible under its digest (atomic rename)."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        stat = final.stat()
        size = stat.st_size
        old = self.entries.pop(digest, None)
        if old is not None:
            self.total -= old.size
        entry = Entry(digest, size, time.time(), old.readers if old else 0)
        entry.seal = Seal.of(stat)  # its writer hashed every byte
        self.entries[digest] = entry
        self.total += size
        self.evict()
        return entry

    def discard(self, digest: str) -> None:
        """Remove a damaged entry (it is never served again)."""
        entry = self.entries.get(digest)
        if entry is not None:
            self._forget(entry)
        self.path(digest).unlink(missing_ok=True)

    def pin(self, entry: Entry) -> None:
        entry.readers += 1

    def unpin(self, entry: Entry) -> None:
        entry.readers -= 1
        if entry.readers == 0 and self.total > self.max_size:
            self.evict()

    def evict(self) -> None:
        """Least recently used first, never an entry being read; one
        worker of a cache at a time (the others' turn comes at their next)."""
        if self.total <= self.max_size:
            return
        with turn(self.root, EVICT_LOCK_NAME) as mine:
            if mine:
                self._evict()

    def _evict(self) -> None:
        for entry in sorted(self.entries.values(), key=lambda e: e.last_used):
            if self.total <= self.max_size:
                break
            if entry.readers:
                continue
            self.path(entry.digest).unlink(missing_ok=True)
            self._forget(entry)
            self.counters.evictions += 1
            log.info(
                "evicted {digest} ({size} bytes)", digest=entry.digest, size=entry.size
            )

    def _forget(self, entry: Entry) -> None:
        if self.entries.pop(entry.digest, None) is not None:
            self.total -= entry.size
