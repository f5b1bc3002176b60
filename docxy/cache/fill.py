"""One upstream transfer of a blob into the cache, shared by every reader.

The fill is the upstream body's ``Protocol`` and is never paused by a
client: it writes to a temp file at the upstream's pace, and each client
reads that file at its own pace (see :mod:`docxy.cache.sender`). So a slow
client does not slow the others, a client that leaves does not stop the
fill (the next client finds the blob), and memory stays flat. The bytes
become visible under their digest only after the digest matched.
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

from ..oci import Digest
from ..streaming import IdleWatchdog
from .blob_store import BlobStore, Entry
from .counters import Counters
from .disk_health import DiskHealth

log = Logger()


class FillState(Enum):
    FILLING = "filling"
    DONE = "done"
    FAILED = "failed"


class Fill(Protocol):
    def __init__(
        self,
        store: BlobStore,
        digest: str,
        length: int | None,
        clock: IReactorTime,
        idle_timeout: float,
        counters: Counters,
        health: DiskHealth | None = None,
    ) -> None:
        """Raises OSError if the temp file cannot be created."""
        self.store = store
        self.health = health or DiskHealth(store.root, clock)
        self.digest = digest
        self.length = length
        self.counters = counters
        self.temp = store.temp_path(digest)
        # Unbuffered: readers have their own descriptors and must see each
        # byte as soon as it is written.
        self._file = open(self.temp, "wb", buffering=0)  # noqa: SIM115
        self._hash = Digest.parse(digest).hasher()
        self.written = 0
        self.state = FillState.FILLING
        self.entry: Entry | None = None
        # Set when the disk failed mid-way: readers continue from upstream.
        self.disk_error: OSError | None = None
        self._listeners: list[Callable[[], None]] = []
        self.finished: defer.Deferred[None] = defer.Deferred()
        self.watchdog = IdleWatchdog(clock, idle_timeout, self._idle)

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when more bytes arrive or the fill ends."""
        self._listeners.append(callback)

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
        # Page-cache writes of one socket read; measured cheap next to the
        # network read that produced them.
        view = memoryview(data)
        try:
            while view:
                view = view[self._file.write(view) or 0 :]
        except OSError as e:
            self._disk_failed(e)
            return
        self._hash.update(data)
        self.written += len(data)
        self.counters.bytes_from_upstream += len(data)
        self._notify()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.watchdog.stop()
        if self.state is not FillState.FILLING:  # the disk failed first
            self.finished.callback(None)
            return
        self._file.close()
        complete = bool(reason.check(ResponseDone, PotentialDataLoss))
        if complete and self.length is not None and self.written != self.length:
            complete = False
        if complete and not self._hash.matches():
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
