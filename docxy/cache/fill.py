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
when there is one.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from enum import Enum
from typing import cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ..oci import Digest, DigestHasher
from ..streaming import IdleWatchdog
from .blob_store import BlobStore, Entry
from .counters import Counters
from .disk_health import DiskHealth
from .hashing import BackgroundHash, HashThread

log = Logger()

# Bytes kept in memory for the first client until it taps the fill.
EARLY = 1024 * 1024


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
    ) -> None:
        """Raises OSError if the temp file cannot be created.

        ``hash_thread``: hash there, not on the reactor thread."""
        self.store = store
        self.health = health or DiskHealth(store.root, clock)
        self.digest = digest
        self.length = length
        self.counters = counters
        self.temp = store.temp_path(digest)
        # Unbuffered: readers have their own descriptors and must see each
        # byte as soon as it is written.
        self._file = open(self.temp, "wb", buffering=0)  # noqa: SIM115
        self._hash: DigestHasher | BackgroundHash = (
            Digest.parse(digest).hasher()
            if hash_thread is None
            else BackgroundHash(
                Digest.parse(digest),
                hash_thread,
                self._pause,
                self._resume,
                file=self._file,
            )
        )
        # The first client's feed: what arrived before it tapped, then a tap.
        self._early: list[bytes] | None = []
        self._tap: Callable[[bytes], None] | None = None
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

    def tap(self, feed: Callable[[bytes], None]) -> bool:
        """Feed ``feed`` every byte from the first on, as it arrives; False if
        too much arrived already (then read the file) or someone tapped."""
        if self._early is None or self._tap is not None:
            return False
        early, self._early = self._early, None
        self._tap = feed
        for data in early:
            feed(data)
        return True

    def untap(self) -> None:
        self._tap = None

    def _pause(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()

    def _resume(self) -> None:
        if self.transport is not None and self.state is FillState.FILLING:
            cast(IPushProducer, self.transport).resumeProducing()

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
                    why=reason.getErrorMessage(),
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
        if not upstream_done and self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()
        self._notify()

    def _idle(self) -> None:
        log.warn(
            "cache fill of {digest} made no progress; aborting", digest=self.digest
        )
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()
