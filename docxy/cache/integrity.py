"""When a cached blob may be served without hashing it again.

A blob is hashed once, as it is written: a fill renames its temp file
under the digest only after the digest matched. Hashing it again on every
hit would cost a core per 500 MiB/s, so a hit trusts the file as long as
nothing touched it since it was verified, and checks that cheaply:

- when a file is verified (the fill that wrote it, or a full read that
  hashed it), the cache records its :class:`Seal`: device, inode, size,
  mtime and ctime, from ``fstat``;
- every hit opens the file and compares ``fstat`` of that descriptor with
  the seal. Any write to the file (a flipped byte, a truncation, a copy
  over it) changes mtime and ctime, a replacement changes the inode: the
  file is then no longer trusted and that read hashes it in the disk
  threads, holding the last chunk back until the digest matched;
- seals live in memory only: after a restart every blob is unverified, so
  the first full read of each after a start is a hashed one (a Range of an
  unverified blob hashes the whole file in the disk threads first).

What a seal cannot see is damage below the filesystem that changes no
metadata (bit rot) while one Docxy keeps running; ``docxy-cache verify``
hashes every file (it reads while Docxy runs; ``--delete`` removes the
damaged ones), and a restart re-verifies on first read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Seal:
    """The file metadata a verified blob had when it was verified."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Seal:
        return cls(
            stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
        )

    @classmethod
    def of_fd(cls, fd: int) -> Seal:
        return cls.of(os.fstat(fd))
