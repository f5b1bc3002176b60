"""Large buffers kept by the C allocator, not mapped and unmapped per use.

Serving a blob reads it in chunks of up to 1 MiB into fresh Python
objects (a read, then the bytes handed to the transport). glibc hands out
anything over 128 KiB with its own ``mmap`` and gives it back with
``munmap`` when freed, so every such chunk costs a system call each way
and a page fault for each of its 256 pages before a byte is copied: a TLS
cache hit spent half its CPU there (2.2 CPU-s/GiB, 0.45x distribution's
TLS hit). glibc raises that threshold by itself once big chunks have been
freed, which is why a process that had just filled a blob through Python
served TLS hits twice as fast as the same process after a restart.

So Docxy fixes the policy at start, as an operator could with
``GLIBC_TUNABLES``: chunks up to :data:`MMAP_THRESHOLD` come from the heap
and are reused, and the heap is given back to the system only past
:data:`TRIM_THRESHOLD` free at its top (the memory a process may keep
unused). An operator's own ``glibc.malloc`` tunables win; other C
libraries (musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_large_buffers() -> bool:
    """Set the policy in this process; False if it was not (not glibc, or
    the operator set ``glibc.malloc`` tunables)."""
    if not sys.platform.startswith("linux"):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: raises elsewhere)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
