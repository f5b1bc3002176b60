"""One upstream transfer per blob across the worker processes of one cache.

Within a process, :class:`~docxy.cache.blob_cache.BlobCache` shares a fill
among its readers. Across the ``--workers`` of one cache directory, the
temp file of a fill has a fixed name, ``tmp/<algorithm>-<hex>.fill``, and
the worker filling it holds an exclusive ``flock`` on it from before its
upstream GET until the file was renamed into ``blobs/`` (verified) or
removed (failed). A worker that finds the lock taken does not ask the
upstream: it watches that file (:class:`RemoteFill`) and its readers read
the growing file as they read a fill of their own, until the lock is
free; then the file is either the verified blob or a failure.

The kernel drops a lock when its holder dies, ``kill -9`` included: a
dead fill leaves a temp file nobody holds, which the next fill truncates
and the next start removes (:func:`clean_temp` never removes a file a
live fill holds). The last byte of a file being filled is never sent
before the fill ended well, so a reader of a fill that died sees a short
read, never a complete-looking blob.

The upstream's length is in a small ``.length`` file beside the temp file
(with the temp file's inode, so a stale one is never believed), for the
readers of other workers to send as ``Content-Length``.

A holder that lives but makes no progress (stopped, hung, swapping) keeps
its lock: a watcher that sees neither the length nor new bytes for
``stall`` seconds stops waiting for it, and its readers take their bodies
from the upstream themselves (uncached), from where each one is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .fill import Fill, FillState

if TYPE_CHECKING:
    from .blob_store import BlobStore, Entry

log = Logger()

SUFFIX = ".fill"
LENGTH = ".length"
# The same claim on a manifest's GET (docxy.cache.manifest_claim).
MANIFEST_SUFFIX = ".manifest"
# How often a watcher looks at a file another worker fills (seconds).
POLL = 0.02
# How long a watcher waits for news of a fill before it stops waiting.
STALL = 60.0


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _length_path(path: Path) -> Path:
    return path.with_name(path.name + LENGTH)


class FillClaim:
    """This process's exclusive right to fill a digest: the lock on its file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def take(cls, path: Path) -> FillClaim | int:
        """The claim on the temp file ``path`` (``BlobStore.temp_path``), or
        (another worker fills it) an open descriptor of that file.

        Raises OSError if the file cannot be created.
        """
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return fd
            if _same_file(fd, path):
                return cls(path, fd)
            # Locked a file its last holder had removed (or renamed) just
            # before: that fill is over; claim the name afresh.
            os.close(fd)

    def announce(self, length: int | None) -> None:
        """Tell other workers' readers the upstream's length (None: unknown)."""
        ino = os.fstat(self.fd).st_ino
        target = _length_path(self.path)
        temp = target.with_name(f"{target.name}.{os.getpid()}")
        try:
            temp.write_text(f"{ino} {'-' if length is None else length}\n")
            os.replace(temp, target)
        except OSError as e:  # they send no Content-Length, nothing worse
            log.warn("cannot write {path}: {why}", path=str(target), why=e.strerror)

    def release(self) -> None:
        """After the fill renamed its file into blobs/ or gave up on it."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if _announced(self.fd, self.path) is not None:
                _length_path(self.path).unlink()
            if _same_file(self.fd, self.path):  # not renamed: nothing to keep
                self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def _announced(fd: int, path: Path) -> tuple[int | None] | None:
    """``(length,)`` the holder of ``fd``'s file announced, None if none."""
    try:
        text = _length_path(path).read_text()
    except OSError:
        return None
    ino, _, length = text.strip().partition(" ")
    if not ino.isdigit() or int(ino) != os.fstat(fd).st_ino:
        return None
    return (int(length) if length.isdigit() else None,)


class RemoteFill(Fill):
    """A fill another worker runs, as this worker's readers see it.

    A :class:`~docxy.cache.fill.Fill` to its readers (``state``,
    ``written``, ``length``, ``temp``, ``listen``, ``finished``), but no
    upstream body: what it knows it learns by looking at the file every
    :data:`POLL` seconds (its size, whether its lock is free yet). After
    ``stall`` seconds without news it fails, its readers resuming from the
    upstream: a stopped worker must not leave clients of another one
    waiting for as long as it is stopped.
    """

    def __init__(  # a Fill to readers, not an upstream body: no super()
        self,
        store: BlobStore,
        digest: str,
        fd: int,
        clock: Any,
        poll: float = POLL,
        stall: float = STALL,
    ) -> None:
        self.store = store
        self.digest = digest
        self.fd = fd
        self.clock = clock
        self.poll = poll
        self.stall = stall
        self.stalled = False
        self._news = clock.seconds()  # when the length or bytes last came
        self.path = store.temp_path(digest)
        # Readers open the file through this descriptor: the same file
        # whatever its holder renames or removes meanwhile.
        self.temp = Path(f"/proc/self/fd/{fd}")
        self.length: int | None = None
        self.written = 0
        self.state = FillState.FILLING
        self.entry: Entry | None = None
        self.disk_error: OSError | None = None
        # Fires once readers can send headers: the length is known, bytes
        # arrived, or the fill is over.
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.finished: defer.Deferred[None] = defer.Deferred()
        self._listeners: list[Callable[[], None]] = []
        self._early: list[bytes] | None = None  # no tap: readers read the file
        self._tap: Callable[[bytes], None] | None = None
        self._call: IDelayedCall | None = None
        self._look()

    @property
    def on_disk(self) -> int:
        """The file's size when last looked at (written there by its holder)."""
        return self.written

    @property
    def resume_upstream(self) -> bool:
        return self.stalled and self.state is FillState.FAILED

    def _wake_when_written(self) -> None:
        """Nothing to wait for here: what ``_look`` sees is on disk."""

    def _look(self) -> None:
        self._call = None
        grew = False
        try:
            if not self.ready.called:
                announced = _announced(self.fd, self.path)
                if announced is not None:
                    self.length = announced[0]
                    self._news = self.clock.seconds()
            size = os.fstat(self.fd).st_size
            if size > self.written:
                self.written, grew = size, True
                self._news = self.clock.seconds()
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                ended = True
            except BlockingIOError:
                ended = False
        except OSError as e:
            log.warn("watching the fill of {digest}: {why}", digest=self.digest, why=e)
            ended = True
        if not ended and self.clock.seconds() - self._news >= self.stall:
            log.warn(
                "the worker filling {digest} made no progress for {stall}s: "
                "its clients here get it from the upstream",
                digest=self.digest,
                stall=self.stall,
            )
            self.stalled = ended = True
        if ended:
            self._end()
            return
        if not self.ready.called and (self.length is not None or self.written):
            self.ready.callback(None)
        if grew:
            self._notify()
        self._call = self.clock.callLater(self.poll, self._look)

    def _end(self) -> None:
        final = self.store.path(self.digest)
        if _same_file(self.fd, final):
            self.entry = self.store.get(self.digest)
        self.state = FillState.DONE if self.entry is not None else FillState.FAILED
        if self.state is FillState.DONE:
            self.written = self.entry.size if self.entry is not None else self.written
        os.close(self.fd)
        self.fd = -1
        if not self.ready.called:
            self.ready.callback(None)
        self._notify()
        self.finished.callback(None)


def clean_temp(tmp: Path) -> None:
    """Remove what dead fills left in ``tmp/``, never a live fill's file."""
    for leftover in sorted(tmp.iterdir()):
        name = leftover.name
        if name.endswith((SUFFIX, MANIFEST_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                claim = FillClaim.take(leftover)
                if isinstance(claim, FillClaim):
                    claim.release()  # nobody held it: a dead fill's
                else:
                    os.close(claim)  # a live fill of another worker
        elif name.endswith(SUFFIX + LENGTH):
            if not leftover.with_name(name[: -len(LENGTH)]).exists():
                leftover.unlink(missing_ok=True)
        else:  # temp files of earlier versions, half-written length files
            leftover.unlink(missing_ok=True)
