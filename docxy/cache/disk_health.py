"""Whether the cache directory takes writes, and stepping aside when not.

A full disk, a directory remounted read-only or one removed under a
running Docxy must not fail a single pull: the cache is an optimisation.
So every write into the cache asks :meth:`DiskHealth.writable` first and
reports its failure to :meth:`DiskHealth.failed`; while the directory is
in trouble, pulls go straight to the upstream (uncached), one warning says
so, and caching resumes by itself once space (or the mount) is back: free
space and a read-only mount are seen by ``statvfs`` on every ask, other
errors by a test write at most every :data:`RETRY` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

RETRY = 10.0  # seconds between test writes while in trouble
RESERVE = 1024 * 1024  # free bytes left alone (for the directory's own files)
SUBDIRECTORIES = ("blobs", "tmp", "manifests")
_SEEN_BY_STATVFS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DiskHealth:
    """The cache directory's state: healthy, or in trouble since an error."""

    def __init__(self, root: Path, clock: IReactorTime) -> None:
        self.root = root
        self.clock = clock
        self.trouble: OSError | None = None
        self._retry_at = 0.0
        self._needed = 0

    def writable(self, need: int = 0) -> bool:
        """May a write of ``need`` bytes (0: unknown) go into the cache now?"""
        try:
            self._recreate()
            stat = os.statvfs(self.root / "tmp")
            if stat.f_flag & os.ST_RDONLY:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            if stat.f_bavail * stat.f_frsize < max(need, self._needed) + RESERVE:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self.trouble is not None:
                # Looks fine again. Space and mounts statvfs sees at once;
                # anything else a test write tells, at most every RETRY s.
                seen = self.trouble.errno in _SEEN_BY_STATVFS
                if not seen and self.clock.seconds() < self._retry_at:
                    return False
                self._probe()
        except OSError as e:
            self.failed(e)
            return False
        if self.trouble is not None:
            log.info(
                "cache directory {root} takes writes again; caching resumes",
                root=str(self.root),
            )
            self.trouble = None
            self._needed = 0
        return True

    def failed(self, error: OSError, needed: int = 0) -> None:
        """A write into the cache failed: step aside until a retry succeeds.

        ``needed``: bytes a write of unknown size had got to when the disk
        was full; the space must be there before the cache writes again.
        """
        self._needed = max(self._needed, needed)
        if self.trouble is None:
            log.warn(
                "cache directory {root} does not take writes ({why}); serving "
                "uncached until it does",
                root=str(self.root),
                why=error.strerror or str(error),
            )
        self.trouble = error
        self._retry_at = self.clock.seconds() + RETRY

    def _recreate(self) -> None:
        """A directory removed under Docxy comes back (an operator wiping it)."""
        missing = [d for d in SUBDIRECTORIES if not (self.root / d).is_dir()]
        for name in missing:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        if missing:
            log.warn(
                "cache directory {root} lost {missing} under Docxy; recreated",
                root=str(self.root),
                missing=", ".join(missing),
            )

    def _probe(self) -> None:
        probe = self.root / "tmp" / f".probe.{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
