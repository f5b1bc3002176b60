"""One upstream GET per manifest across the worker processes of one cache.

Within a process, :class:`~docxy.cache.manifest_cache.ManifestCache`
shares one GET among the clients that miss a manifest at the same moment.
Docker Hub counts every manifest GET as a pull, so the ``--workers`` of a
cache share it too: the worker that GETs a manifest holds an exclusive
``flock`` on ``tmp/<algorithm>-<hex>.manifest`` (the same claim as a blob
fill's, :class:`~docxy.cache.fill_lock.FillClaim`) from before the GET
until the manifest is stored or the GET failed. A worker that finds the
claim taken waits until it is free (looking every :data:`POLL` seconds,
for at most ``stall``), then reads the manifest from the store; if it is
not there (the other worker's GET failed, or was refused its client's
credentials), it claims the manifest itself and GETs it.

A worker killed mid-GET loses its lock with its life, so nobody waits on
a dead one; a stopped one is waited for ``stall`` seconds at most.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.task import deferLater

from .fill_lock import MANIFEST_SUFFIX, POLL, FillClaim

# How long a worker waits for another one's GET before it makes its own.
STALL = 30.0

T = TypeVar("T")


class ManifestClaims:
    """Who GETs a manifest among the workers sharing ``tmp``."""

    def __init__(
        self, tmp: Path, clock: Any, poll: float = POLL, stall: float = STALL
    ) -> None:
        self.tmp = tmp
        self.clock = clock
        self.poll = poll
        self.stall = stall

    def path(self, digest: str) -> Path:
        return self.tmp / f"{digest.replace(':', '-')}{MANIFEST_SUFFIX}"

    async def get_once(
        self,
        digest: str,
        get: Callable[[], Awaitable[T]],
        landed: Callable[[], Awaitable[T | None]],
        waited: Callable[[], None] = lambda: None,
    ) -> T:
        """``get()`` under the claim on ``digest``; or, while another worker
        holds it, wait (``waited()`` once) and take what it ``landed()``."""
        told = False
        while True:
            try:
                claim = FillClaim.take(self.path(digest))
            except OSError:
                return await get()  # no claim to be had: as a single process
            if isinstance(claim, FillClaim):
                try:
                    return await get()
                finally:
                    claim.release()
            if not told:
                told = True
                waited()
            try:
                freed = await self._released(claim)
            finally:
                os.close(claim)
            found = await landed()
            if found is not None:
                return found
            if not freed:
                return await get()  # its holder is stuck: do without it

    async def _released(self, fd: int) -> bool:
        """Whether the claim on ``fd``'s file was let go within ``stall``."""
        deadline = self.clock.seconds() + self.stall
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            if self.clock.seconds() >= deadline:
                return False
            await deferLater(self.clock, self.poll, lambda: None)
