"""One upstream transfer of a blob into the cache, shared by every reader.

The fill is the upstream body's ``Protocol`` and is never paused by a
client: it writes to a temp file at the upstream's pace, and each client
reads that file at its own pace (see :mod:`docxy.cache.sender`). So a slow
client does not slow the others, a client that leaves does not stop the
fill (the next client finds the blob), and memory stays flat. The bytes
become visible under their digest only after the digest matched.

The client that started the fill is fed from the bytes as they arrive
(:meth:`Fill.tap`, :mod:`docxy.cache.tee`) rather than from reading the
file back; what arrived before it tapped is kept (up to :data:`EARLY`).
The digest is computed in the hash thread (:mod:`docxy.cache.hashing`)
when there is one. On a plain TCP upstream with a Content-Length, the rest
of the body goes from the socket to the file in the kernel
(:mod:`docxy.cache.kernel_fill`), and the first client reads the file too.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import BinaryIO, cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ..oci import Digest, DigestHasher
from ..pipes import can_splice
from ..streaming import IdleWatchdog
from ..upstream_client import raw_body
from .blob_store import BlobStore, Entry
from .counters import Counters
from .disk_health import DiskHealth
from .hashing import BackgroundHash, HashThread
from .kernel_fill import KERNEL_MIN, KernelFill

log = Logger()

# Bytes kept in memory for the first client until it taps the fill.
EARLY = 1024 * 1024
# The first chunks of a body may find it ready for the kernel (KernelFill).
KERNEL_TRIES = 4


def open_fill_file(path: Path) -> BinaryIO:
    """The temp file ``path`` (its claim may have made it), empty, for
    reading and unbuffered writing.

    Not truncated unless it holds bytes (a dead worker's): on ext4, a
    truncated file's close starts the writeback of everything written since
    (``auto_da_alloc``) and waits while it is submitted, about 130 ms for
    500 MiB, between the last byte hashed and the fill's end.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
        return open(fd, "r+b", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class FillState(Enum):
    """Where a fill is: readers wait while FILLING, then hit or fall back."""

    FILLING = "filling"
    DONE = "done"
    FAILED = "failed"


class Fill(Protocol):
    """The upstream body of one blob, written to a temp file for every reader.

    It is never paused by a client, so a slow or departed client does not
    hold up the others or the cache entry.
    """

    def __init__(
        self,
        store: BlobStore,
        digest: str,
        length: int | None,
        clock: IReactorTime,
        idle_timeout: float,
        counters: Counters,
        health: DiskHealth | None = None,
        hash_thread: HashThread | None = None,
        kernel_pool: ThreadPool | None = None,
    ) -> None:
        """Raises OSError if the temp file cannot be created.

        ``hash_thread``: hash there, not on the reactor thread;
        ``kernel_pool``: where the kernel's steps run (with a hash thread),
        None to keep every byte in Python."""
        self.store = store
        self.clock = clock
        self.health = health or DiskHealth(store.root, clock)
        self.digest = digest
        self.length = length
        self.counters = counters
        self.temp = store.temp_path(digest)
        # Unbuffered: readers have their own descriptors and must see each
        # byte as soon as it is written.
        # Read too: a body the kernel writes is hashed from the page cache.
        self._file = open_fill_file(self.temp)
        self._hash: DigestHasher | BackgroundHash = (
            Digest.parse(digest).hasher()
            if hash_thread is None
            else BackgroundHash(
                Digest.parse(digest),
                hash_thread,
                self._pause,
                self._resume,
                file=self._file,
                clock=clock,
            )
        )
        # The first client's feed: what arrived before it tapped, then a tap.
        self._early: list[bytes] | None = []
        self._tap: Callable[[bytes], None] | None = None
        self._leave: Callable[[], None] | None = None
        # Set while the kernel moves the body (docxy.cache.kernel_fill).
        self._kernel: KernelFill | None = None
        self.kernel_pool = kernel_pool
        self._kernel_pending = False  # waiting for the writes before it
        self._kernel_tries = (
            KERNEL_TRIES
            if kernel_pool is not None and length is not None and can_splice(clock)
            else 0
        )
        self._upstream_why: str | None = None
        self.written = 0
        self.state = FillState.FILLING
        self.entry: Entry | None = None
        # Set when the disk failed mid-way: readers continue from upstream.
        self.disk_error: OSError | None = None
        self._listeners: list[Callable[[], None]] = []
        self._catching_up = False
        self.finished: defer.Deferred[None] = defer.Deferred()
        self.watchdog = IdleWatchdog(clock, idle_timeout, self._idle)

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when more bytes arrive or the fill ends."""
        self._listeners.append(callback)
        self._wake_when_written()

    def _wake_when_written(self) -> None:
        """With the writes in the hash thread, bytes that arrived may not be
        in the file yet when a reader of the file asks to wait: wake it when
        the thread wrote them, not only when more arrive (an upstream that
        pauses would leave that reader, and its response headers, waiting)."""
        pending = self._hash
        if (
            isinstance(pending, BackgroundHash)
            and not self._catching_up
            and pending.on_disk < self.written
        ):
            self._catching_up = True
            pending.caught_up().addCallback(self._written)

    def _written(self, _: object) -> None:
        self._catching_up = False
        self._notify()

    def tap(self, feed: Callable[[bytes], None], leave: Callable[[], None]) -> bool:
        """Feed ``feed`` every byte from the first on, as it arrives; False if
        too much arrived already (then read the file) or someone tapped.
        ``leave()``: the bytes stop coming this way (the kernel moves them
        to the file from now on): read the rest from the file."""
        if self._early is None or self._tap is not None:
            return False
        early, self._early = self._early, None
        self._tap, self._leave = feed, leave
        for data in early:
            feed(data)
        return True

    def untap(self) -> None:
        self._tap = self._leave = None

    @property
    def _in_kernel(self) -> KernelFill | None:
        """The KernelFill moving the body now, if one does."""
        kernel = self._kernel
        return kernel if kernel is not None and not kernel.done else None

    def _pause(self) -> None:
        if kernel := self._in_kernel:
            kernel.pause()
        elif self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()

    def _resume(self) -> None:
        if self.state is not FillState.FILLING or self._kernel_pending:
            return
        if kernel := self._in_kernel:
            kernel.resume()
        elif self.transport is not None:
            cast(IPushProducer, self.transport).resumeProducing()

    def _stop_upstream(self) -> None:
        if kernel := self._in_kernel:
            kernel.stop()
        elif self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def _try_kernel(self) -> None:
        """Hand the rest of the body to the kernel, if the socket allows: once
        every byte before it is in the file (readers read up to ``on_disk``,
        which must have no hole)."""
        self._kernel_tries -= 1
        hashing = self._hash
        if not isinstance(hashing, BackgroundHash):  # (tries: a hash thread)
            return
        body = raw_body(self.transport)
        if body is None or body.remaining - 1 < KERNEL_MIN:
            return
        self._kernel_tries = 0
        self._kernel_pending = True
        cast(IPushProducer, self.transport).pauseProducing()
        hashing.caught_up().addCallback(lambda _: self._start_kernel(hashing))

    def _start_kernel(self, hashing: BackgroundHash) -> None:
        self._kernel_pending = False
        if self.state is not FillState.FILLING:
            return
        body = raw_body(self.transport)
        kernel = None
        if body is not None:
            kernel = KernelFill(
                body,
                hashing,
                self._file.fileno(),
                self.clock,
                self.kernel_pool,
                self._kernel_moved,
                self._disk_failed,
                self._kernel_upstream_failed,
            )
        if kernel is None or not kernel.start():
            cast(IPushProducer, self.transport).resumeProducing()
            return
        self._kernel = kernel
        self.counters.kernel_fills += 1
        self._early = None  # a client tapping later reads the file
        leave, self._tap, self._leave = self._leave, None, None
        if leave is not None:
            leave()

    def _kernel_moved(self, count: int) -> None:
        if self.state is not FillState.FILLING:
            return
        self.watchdog.touch()
        self.written += count
        self.counters.bytes_from_upstream += count
        self._notify()

    def _kernel_upstream_failed(self, why: str) -> None:
        self._upstream_why = why

    def _notify(self) -> None:
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            callback()

    def connectionMade(self) -> None:
        self.watchdog.start()

    def dataReceived(self, data: bytes) -> None:
        if self.state is not FillState.FILLING:
            return
        self.watchdog.touch()
        background = isinstance(self._hash, BackgroundHash)
        try:
            if background and self._hash.error is not None:  # type: ignore[union-attr]
                raise self._hash.error  # type: ignore[union-attr]
            view = memoryview(data)
            while view and not background:
                view = view[self._file.write(view) or 0 :]
        except OSError as e:
            self._disk_failed(e)
            return
        self._hash.update(data)  # in the background: written there too
        self.written += len(data)
        self.counters.bytes_from_upstream += len(data)
        if self._tap is not None:
            self._tap(data)
        elif self._early is not None:
            self._early.append(data)
            if self.written > EARLY:
                self._early = None  # the first client reads the file instead
        self._notify()
        if self._kernel_tries and self.state is FillState.FILLING:
            self._try_kernel()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.watchdog.stop()
        if self.state is not FillState.FILLING:  # the disk failed first
            self.finished.callback(None)
            return
        self._early = None
        if isinstance(self._hash, BackgroundHash):  # it closes the file
            self._hash.matches().addCallback(lambda good: self._ended(reason, good))
        else:
            self._file.close()
            self._ended(reason, self._hash.matches())

    @property
    def resume_upstream(self) -> bool:
        """Failed mid-way such that its readers take the rest of their body
        from the upstream (from where each is) rather than a short read:
        the disk failed."""
        return self.disk_error is not None

    @property
    def on_disk(self) -> int:
        """How many bytes the temp file holds so far."""
        if isinstance(self._hash, BackgroundHash):
            return self._hash.on_disk
        return self.written

    def _ended(self, reason: Failure, good: bool) -> None:
        error = getattr(self._hash, "error", None)
        if error is not None and self.state is FillState.FILLING:
            self._disk_failed(error, upstream_done=True)
            self.finished.callback(None)
            return
        complete = bool(reason.check(ResponseDone, PotentialDataLoss))
        if complete and self.length is not None and self.written != self.length:
            complete = False
        if complete and not good:
            self.counters.digest_mismatches += 1
            log.error(
                "upstream sent bytes that do not match {digest}; discarded",
                digest=self.digest,
            )
            complete = False
        if complete:
            try:
                self.entry = self.store.add(self.digest, self.temp)
            except OSError as e:
                self._disk_failed(e, upstream_done=True)
                self.finished.callback(None)
                return
            self.state = FillState.DONE
        else:
            self.temp.unlink(missing_ok=True)
            self.state = FillState.FAILED
            if not reason.check(ResponseDone, PotentialDataLoss):
                log.warn(
                    "cache fill of {digest} failed after {bytes} bytes: {why}",
                    digest=self.digest,
                    bytes=self.written,
                    why=self._upstream_why or reason.getErrorMessage(),
                )
        self._notify()
        self.finished.callback(None)

    def _disk_failed(self, error: OSError, upstream_done: bool = False) -> None:
        """The cache disk failed this fill: nothing partial stays, readers
        continue from upstream, and the cache steps aside (one warning)."""
        self.disk_error = error
        self.state = FillState.FAILED
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        self.health.failed(error, self.written if full else 0)
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)
        self.watchdog.stop()
        if not upstream_done:
            self._stop_upstream()
        self._notify()

    def _idle(self) -> None:
        log.warn(
            "cache fill of {digest} made no progress; aborting", digest=self.digest
        )
        self._stop_upstream()
