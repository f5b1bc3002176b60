"""Where the cache lives, how big it may grow, and who owns it.

The cache is on by default, so it needs a home without configuration: the
XDG cache directory for a user, ``/var/cache/docxy`` for root (and in the
image). One Docxy owns a directory at a time: two daemons scanning,
evicting and cleaning ``tmp/`` in the same place would delete each other's
fills. Ownership is an exclusive ``flock`` on ``DIR/lock``, taken at start
and held for the life of the process. ``flock`` belongs to the open file,
not the process, so worker processes that inherit (or are passed) the
descriptor share the lock with the parent that took it, and it is released
whenever the last of them exits, however it exits (``kill -9`` too).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

# The default bound: at most this much ...
DEFAULT_MAX_SIZE = 10 * 1024**3
# ... and at most this share of what the cache could use on its filesystem
# at start (free space plus what the cache already holds).
DEFAULT_SHARE = 0.5
LOCK_NAME = "lock"
# Held by the worker evicting: one eviction at a time per directory.
EVICT_LOCK_NAME = "evict.lock"


class CacheDirError(Exception):
    """The cache directory cannot be used; the message is one line."""


def default_cache_dir(
    euid: int | None = None, environ: dict[str, str] | None = None
) -> Path:
    """``/var/cache/docxy`` for root, else ``$XDG_CACHE_HOME/docxy``."""
    env = os.environ if environ is None else environ
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/cache/docxy")
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else None
    if base is None:
        base = Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "docxy"


def default_max_size(root: Path, cached: int) -> int:
    """min(10 GiB, half of (free space + bytes already cached)) on ``root``."""
    stat = os.statvfs(root)
    free = stat.f_bavail * stat.f_frsize
    return max(1, min(DEFAULT_MAX_SIZE, int((free + cached) * DEFAULT_SHARE)))


def check_usable(root: Path) -> bool:
    """Whether Docxy can use ``root``, without creating or locking anything:
    True if it exists (a writable directory), False if it is missing and
    can be created; otherwise :class:`CacheDirError`. Start runs it before
    taking the lock, ``--check-config`` instead of taking it."""
    if root.exists():
        if not root.is_dir():
            raise CacheDirError(f"{str(root)!r} is not a directory")
        if not os.access(root, os.W_OK | os.X_OK):
            raise CacheDirError(f"{str(root)!r} is not writable")
        return True
    parent = root.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        why = os.strerror(errno.ENOTDIR)
    elif not os.access(parent, os.W_OK | os.X_OK):
        why = os.strerror(errno.EACCES)
    else:
        return False
    raise CacheDirError(f"cannot use {str(root)!r}: {why}")


class CacheLock:
    """The exclusive lock on a cache directory, held until the process ends."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self.fd = fd

    @classmethod
    def acquire(cls, root: Path) -> CacheLock:
        """Create ``root`` if needed and lock it, or raise :class:`CacheDirError`."""
        check_usable(root)
        try:
            # Private images' blobs are in it: a directory Docxy makes is its
            # own (one the operator made keeps its mode).
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Read-only: flock needs no write access, and a long-lived writer
            # would keep the disk from being remounted read-only.
            fd = os.open(
                root / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise CacheDirError(f"cannot use {str(root)!r}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = holder(root)
            who = f" (pid {owner})" if owner and owner > 0 else ""
            raise CacheDirError(
                f"{str(root)!r} is in use by another Docxy{who}; give each its "
                "own --cache-dir"
            ) from None
        (root / LOCK_NAME).write_text(f"{os.getpid()}\n")
        if not os.access(root, os.W_OK):
            os.close(fd)
            raise CacheDirError(f"{str(root)!r} is not writable")
        return cls(root, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def holder(root: Path) -> int | None:
    """The pid of the Docxy holding ``root``'s lock, None if it is free."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def turn(root: Path, name: str) -> Iterator[bool]:
    """True inside if this process got the exclusive lock ``root/name``,
    False if another holds it now (nobody waits for it)."""
    fd = os.open(root / name, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
