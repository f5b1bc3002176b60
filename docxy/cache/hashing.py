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

A fill whose body the kernel moves straight from the upstream socket into
the file (:mod:`docxy.cache.kernel_fill`) counts those bytes in
``spliced`` and has them hashed from the page cache
(:meth:`BackgroundHash.hash_written`), in the same queue: the digest is
over the bytes in arrival order whichever way they came. What waits then
is in the page cache, not in our memory, so the bound on it is longer
(``max_lag``): the kernel goes on reading while the hash thread waits for
a core, and the hash catches up when the upstream pauses. The last byte
waits for the whole digest, so the bound is also the longest the end can
wait (64 MiB: about 40 ms).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..oci import Digest, DigestHasher

# Bytes received in memory that may wait for the thread.
MAX_QUEUED = 16 * 1024 * 1024
# Bytes the kernel wrote that may wait to be hashed (cold A/B on 2 cores:
# 1.03x distribution's proxy with 16 MiB, 1.12x with 64 MiB).
MAX_LAG = 64 * 1024 * 1024
# Bytes read back from the page cache per hash update (absorb).
READ_BACK = 1024 * 1024
# Received chunks are handed to the thread this many bytes at a time, the
# rest at the end of the reactor's turn: a TLS upstream delivers 16 KiB
# (one record) per chunk, and a thread hand-off per record cost a fifth of
# the reactor thread.
BATCH = 256 * 1024
BATCH_CHUNKS = 64  # and at most this many chunks per job (one pwritev)


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
        max_lag: int = MAX_LAG,
        clock: IReactorTime | None = None,
    ) -> None:
        """``clock``: where a part batch waits for the end of the turn (the
        thread's reactor by default)."""
        self.hasher: DigestHasher = digest.hasher()
        self.file = file
        self.written = 0  # by the thread only
        self.spliced = 0  # by the kernel (the reactor counts them)
        self.error: OSError | None = None
        self.thread = thread
        self.on_full = on_full
        self.on_room = on_room
        self.max_queued = max_queued
        self.max_lag = max_lag
        self._bound_now = max_queued  # the bound of what waits now
        self.submitted = 0  # bytes of the body so far: the next one's offset
        self.hashed = 0  # written by the hash thread only
        self._waiting = False
        self._room_told = False
        self._buffer: bytearray | None = None  # absorb's, made on first use
        self.clock: IReactorTime = clock or thread.reactor
        self._held: list[bytes] = []  # received, not yet handed to the thread
        self._held_bytes = 0  # (the last ones before ``submitted``)
        self._handing: IDelayedCall | None = None

    @property
    def on_disk(self) -> int:
        """How much of the file readers may read: written by either."""
        return self.written + self.spliced

    def update(self, data: bytes) -> None:
        """The body's next bytes, received: written and hashed in the thread."""
        self._held.append(data)
        self._held_bytes += len(data)
        self.submitted += len(data)
        if self._held_bytes >= BATCH or len(self._held) >= BATCH_CHUNKS:
            self._hand_over()
        elif self._handing is None:
            self._handing = self.clock.callLater(0, self._hand_over)
        self._bound(self.max_queued)

    def _hand_over(self) -> None:
        """What is held, to the thread in one job (before anything after it)."""
        if self._handing is not None:
            if self._handing.active():
                self._handing.cancel()
            self._handing = None
        if self._held:
            chunks, offset = self._held, self.submitted - self._held_bytes
            self._held, self._held_bytes = [], 0
            self.thread.pool().callInThread(self._hash, chunks, offset)

    def hash_written(self, count: int) -> None:
        """``count`` more bytes the kernel put in the file, at ``submitted``:
        hash them from there (the next bytes' offset moves past them)."""
        self._hand_over()
        offset = self.submitted
        self.submitted += count
        self.spliced += count
        self.thread.pool().callInThread(self._absorb, offset, count)
        self._bound(self.max_lag)

    def _bound(self, bound: int) -> None:
        if not self._waiting and self.submitted - self.hashed > bound:
            self._bound_now = bound
            self._waiting = True
            self._room_told = False
            self.on_full()
            # Checked after every job from now on; this one in case none is left.
            self.thread.pool().callInThread(self._tell_room)

    def _tell_room(self) -> None:
        """In the thread: resume once half the bound is free (not empty: the
        upstream refills while the rest is hashed)."""
        if (
            self._waiting
            and not self._room_told
            and self.submitted - self.hashed <= self._bound_now // 2
        ):
            self._room_told = True
            self.thread.reactor.callFromThread(self._room, None)

    def _hash(self, chunks: list[bytes], offset: int) -> None:
        size = sum(len(chunk) for chunk in chunks)
        if self.file is not None and self.error is None:
            try:
                _pwrite_all(self.file.fileno(), chunks, offset)
            except (OSError, ValueError) as e:  # ValueError: closed under us
                self.error = e if isinstance(e, OSError) else OSError(str(e))
            else:
                self.written += size
        for chunk in chunks:
            self.hasher.update(chunk)
        self.hashed += size
        self._tell_room()

    def _absorb(self, offset: int, count: int) -> None:
        """Hash ``count`` bytes of the file from ``offset`` (page cache)."""
        if self._buffer is None:
            self._buffer = bytearray(READ_BACK)
        buffer = memoryview(self._buffer)
        try:
            if self.error is not None or self.file is None:
                raise OSError("the file is gone")
            fd = self.file.fileno()
            while count > 0:
                got = os.preadv(fd, [buffer[: min(count, READ_BACK)]], offset)
                if got <= 0:
                    raise OSError(f"the cache file ends at {offset}, before its bytes")
                self.hasher.update(buffer[:got])
                offset, count = offset + got, count - got
                self.hashed += got
                self._tell_room()
        except (OSError, ValueError) as e:  # the digest cannot match now
            self.error = self.error or (
                e if isinstance(e, OSError) else OSError(str(e))
            )
            self.hashed += count

    def caught_up(self) -> defer.Deferred[None]:
        """Fires once every chunk submitted so far is written and hashed."""
        self._hand_over()
        return deferToThreadPool(self.thread.reactor, self.thread.pool(), lambda: None)

    def _room(self, _: object) -> None:
        self._waiting = False
        self.on_room()

    def matches(self) -> defer.Deferred[bool]:
        """Whether the whole body matched, once the thread hashed it all."""
        self._hand_over()
        return deferToThreadPool(self.thread.reactor, self.thread.pool(), self._last)

    def _last(self) -> bool:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as e:
                self.error = self.error or e
        return self.hasher.matches()


def _pwrite_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write ``chunks`` one after the other at ``offset`` (``pwritev``)."""
    views = [memoryview(chunk) for chunk in chunks]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
