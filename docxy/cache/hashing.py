"""A fill's digest, computed in a thread of its own instead of the reactor's.

SHA-256 of a blob arriving at wire speed costs about as much CPU as
receiving it; ``hashlib`` releases the GIL for large updates, so in a
thread it runs on the other core while the reactor moves bytes. Chunks
are hashed in arrival order (one thread, first in first out); the bytes
waiting for it are references to the chunks already received, and when
more than ``max_queued`` wait, ``on_full`` pauses the upstream until the
thread has caught up (``on_room``), so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    """``update`` from the reactor, hashed in ``thread``; ``matches()`` at the end."""

    def __init__(
        self,
        digest: Digest,
        thread: HashThread,
        on_full: Callable[[], None],
        on_room: Callable[[], None],
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.hasher: DigestHasher = digest.hasher()
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
            self._caught_up().addCallback(self._room)

    def _hash(self, data: bytes) -> None:
        self.hasher.update(data)
        self.hashed += len(data)

    def _caught_up(self) -> defer.Deferred[None]:
        """Fires once every chunk submitted so far is hashed."""
        return deferToThreadPool(self.thread.reactor, self.thread.pool(), lambda: None)

    def _room(self, _: object) -> None:
        self._waiting = False
        self.on_room()

    def matches(self) -> defer.Deferred[bool]:
        """Whether the whole body matched, once the thread hashed it all."""
        return deferToThreadPool(
            self.thread.reactor, self.thread.pool(), self.hasher.matches
        )
