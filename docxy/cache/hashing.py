"""A fill's file writes and digest, in a thread of their own, not the reactor's.

SHA-256 of a blob arriving at wire speed costs about as much CPU as
receiving it, and the page-cache copy of each write a good part of it;
``hashlib`` and file writes release the GIL, so in a thread they run on
the other core while the reactor moves bytes. Chunks are written and
hashed in arrival order (one thread, first in first out); ``on_disk``
says how far the file is written (readers of the growing file read no
further), a write error is kept in ``error``; the bytes
waiting for it are references to the chunks already received, and when
more than ``max_queued`` wait, ``on_full`` pauses the upstream until the
thread has caught up (``on_room``), so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..oci import Digest, DigestHasher

MAX_QUEUED = 16 * 1024 * 1024


class HashThread:
    """The one thread fills hash in (ordered); the disk pool starts and stops it."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="docxy-hash")

    def pool(self) -> ThreadPool:
        if not self._pool.started:
            self._pool.start()
        return self._pool

    def stop(self) -> None:
        if self._pool.started and not self._pool.joined:
            self._pool.stop()


class BackgroundHash:
    """``update`` from the reactor, written to ``file`` and hashed in
    ``thread``; ``matches()`` at the end (which closes the file)."""

    def __init__(
        self,
        digest: Digest,
        thread: HashThread,
        on_full: Callable[[], None],
        on_room: Callable[[], None],
        file: BinaryIO | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.hasher: DigestHasher = digest.hasher()
        self.file = file
        self.on_disk = 0  # written by the thread only
        self.error: OSError | None = None
        self.thread = thread
        self.on_full = on_full
        self.on_room = on_room
        self.max_queued = max_queued
        self.submitted = 0
        self.hashed = 0  # written by the hash thread only
        self._waiting = False

    def update(self, data: bytes) -> None:
        self.submitted += len(data)
        self.thread.pool().callInThread(self._hash, data)
        if not self._waiting and self.submitted - self.hashed > self.max_queued:
            self._waiting = True
            self.on_full()
            self.caught_up().addCallback(self._room)

    def _hash(self, data: bytes) -> None:
        if self.file is not None and self.error is None:
            try:
                view = memoryview(data)
                while view:
                    view = view[self.file.write(view) or 0 :]
            except (OSError, ValueError) as e:  # ValueError: closed under us
                self.error = e if isinstance(e, OSError) else OSError(str(e))
            else:
                self.on_disk += len(data)
        self.hasher.update(data)
        self.hashed += len(data)

    def caught_up(self) -> defer.Deferred[None]:
        """Fires once every chunk submitted so far is written and hashed."""
        return deferToThreadPool(self.thread.reactor, self.thread.pool(), lambda: None)

    def _room(self, _: object) -> None:
        self._waiting = False
        self.on_room()

    def matches(self) -> defer.Deferred[bool]:
        """Whether the whole body matched, once the thread hashed it all."""
        return deferToThreadPool(self.thread.reactor, self.thread.pool(), self._last)

    def _last(self) -> bool:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as e:
                self.error = self.error or e
        return self.hasher.matches()
