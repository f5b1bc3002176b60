"""Answering a GET from a cached blob file: the whole blob or one Range.

The file is opened and ``fstat``-ed first: if it still has the seal it had
when it was verified (:mod:`docxy.cache.integrity`) it is served without
hashing, by the kernel on plain TCP (:mod:`docxy.cache.kernel_sender`) and
by reads with read-ahead on TLS (:mod:`docxy.cache.sender`); otherwise
this read hashes it in the disk threads (a full read holds its last chunk
back until the digest matched; a Range hashes the whole file first), and
a match seals it again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Request

from ..errors import range_invalid, write_error
from ..oci import Digest
from ..plain_tcp import kernel_transport
from .blob_store import BlobStore, Entry
from .disk_pool import DiskPool
from .integrity import Seal
from .kernel_sender import KernelSender
from .sender import FileSender

_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_exclusive)``, None for the whole blob, or "unsatisfiable".

    Only single ranges are honoured; anything else gets the whole blob,
    which HTTP allows.
    """
    if header is None:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return (max(0, size - length), size)
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return "unsatisfiable"
    return (start, end)


class Hits:
    """Serves cached entries; ``damaged(digest)`` is told of a bad file,
    ``sent(request, outcome, bytes)`` of each answer's end."""

    def __init__(
        self,
        store: BlobStore,
        disk: DiskPool,
        reactor: Any,
        idle_timeout: float,
        headers: Callable[[Request, str, int, int | None], None],
        damaged: Callable[[str], None],
        sent: Callable[[Request, str, int], None],
    ) -> None:
        self.store = store
        self.disk = disk
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.headers = headers
        self.damaged = damaged
        self.sent = sent

    async def serve(
        self, request: Request, entry: Entry, fallback: Callable[[], Awaitable[None]]
    ) -> None:
        """Answer from ``entry``; ``fallback()`` answers instead if the file
        turns out damaged or gone before anything was sent."""
        digest = entry.digest
        wanted = parse_range(request.getHeader(b"range"), entry.size)
        if wanted == "unsatisfiable":
            write_error(request, range_invalid(entry.size))
            return
        try:
            fd = os.open(self.store.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed behind our back
            self.store.discard(digest)
            await fallback()
            return
        self.store.pin(entry)
        try:
            seal = Seal.of_fd(fd)
            trusted = self.store.trusted(entry, seal)
            if wanted is not None and not trusted:
                # A range cannot be checked on its own: check the file first.
                trusted = await deferToThreadPool(
                    self.reactor,
                    self.disk.threads(),
                    Digest.parse(digest).matches_file,
                    fd,
                )
                if not trusted:
                    os.close(fd)
                    self.damaged(digest)
                    await fallback()
                    return
                self.store.seal(entry, seal)
        except BaseException:
            self.store.unpin(entry)
            if fd >= 0:
                os.close(fd)
            raise
        self._send(request, entry, fd, seal, trusted, wanted)

    def _send(
        self,
        request: Request,
        entry: Entry,
        fd: int,
        seal: Seal,
        trusted: bool,
        wanted: tuple[int, int] | str | None,
    ) -> None:
        digest = entry.digest
        if isinstance(wanted, tuple):
            start, end = wanted
            self.headers(request, digest, 206, end - start)
            request.setHeader(
                b"content-range", b"bytes %d-%d/%d" % (start, end - 1, entry.size)
            )
        else:
            start, end = 0, entry.size
            self.headers(request, digest, 200, entry.size)
        verify = None if trusted else Digest.parse(digest).hasher()

        def ended(outcome: str, sent: int) -> None:
            self.store.unpin(entry)
            if outcome == "digest-mismatch":
                self.damaged(digest)
            elif outcome == "done" and verify is not None:
                self.store.seal(entry, seal)
            self.sent(request, outcome, sent)

        transport = kernel_transport(request) if trusted else None
        if transport is not None:
            KernelSender(
                request,
                transport,
                fd,
                start,
                end,
                self.reactor,
                self.idle_timeout,
                ended,
            ).start()
            return
        FileSender(
            request,
            fd,
            start,
            end,
            self.reactor,
            self.disk.threads(),
            verify=verify,
            on_end=ended,
            idle=(self.reactor, self.idle_timeout),
            read_ahead=True,
        ).start()
