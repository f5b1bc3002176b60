"""Cold fills on plain TCP: the upstream body goes socket -> pipe -> file in
the kernel, and is hashed from the page cache.

A fill through Python costs, per byte, a ``recv`` into a new bytes object
on the reactor thread, the calls that pass it along, a write into the
file and the hash; the first client's copy is a ``send`` more. When the
upstream connection is plain TCP and its body has a Content-Length, the
fill hands the rest of the body to :class:`KernelFill` instead: the bytes
never pass through the reactor thread. Each step runs in a disk thread:
``splice(2)`` from the socket into a pipe and from the pipe into the temp
file at its offset. The fill's hash thread (:mod:`docxy.cache.hashing`)
then reads the same bytes back from the page cache and hashes them, while
the next step already moves more: receiving and hashing overlap, as they
do in distribution's proxy. Clients read the growing file, by
``sendfile(2)`` on plain TCP (:mod:`docxy.cache.kernel_sender`).

The reactor stays in charge of the socket: it waits for it to be readable
(this object is its reader meanwhile, as in :mod:`docxy.socket_relay`), runs one
step in the thread, and takes the socket back only between steps, so the
descriptor is never closed under a step. The last byte is left to the HTTP
client's parser (:meth:`~docxy.upstream_client.RawBody.consumed`), so the
response ends as usual and the connection goes back to the pool. An
upstream that closes early, or a socket error, aborts the connection: the
fill sees a failed body and keeps nothing. A file write that fails is the
fill's disk error, as for a write in Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..pipes import open_pipe
from ..upstream_client import RawBody
from .hashing import BackgroundHash

log = Logger()

# Bodies shorter than this are filled through Python (setting up costs calls).
KERNEL_MIN = 1024 * 1024
# The pipe between socket and file.
PIPE_SIZE = 1024 * 1024
# At most this much per step: other fills' writes get their turn in the thread.
STEP_BYTES = 8 * 1024 * 1024

_MOVE = os.SPLICE_F_MOVE if hasattr(os, "splice") else 0
_NONBLOCK = os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0


@dataclass
class Step:
    """Why one step in the thread stopped early (both None: the socket had
    no more for now); the bytes it moved were told by ``progress``."""

    upstream_error: str | None = None
    disk_error: OSError | None = None


@implementer(IReadDescriptor)
class KernelFill:
    """Moves ``body``'s bytes but its last into the fill's file, from offset
    ``hashing.submitted`` on (every earlier byte is written), in steps in
    ``pool``; ``moved(n)`` as each pipeful lands, ``disk_failed(e)`` if the file
    refused them, ``upstream_failed(why)`` before the upstream connection is
    aborted."""

    def __init__(
        self,
        body: RawBody,
        hashing: BackgroundHash,
        file_fd: int,
        reactor: Any,
        pool: Any,
        moved: Callable[[int], None],
        disk_failed: Callable[[OSError], None],
        upstream_failed: Callable[[str], None],
    ) -> None:
        self.body = body
        self.hashing = hashing
        self.file_fd = file_fd
        self.reactor = reactor
        self.pool = pool
        self.moved = moved
        self.disk_failed = disk_failed
        self.upstream_failed = upstream_failed
        self.upstream = body.transport
        self._fd = self.upstream.fileno()
        self.left = body.remaining - 1  # the last byte goes through the parser
        self.offset = hashing.submitted
        self.spliced = 0
        self._pipe: tuple[int, int] | None = None
        self._pipe_size = PIPE_SIZE
        self._reading = False
        self._in_step = False
        self._paused = False
        self._stopping = False
        self.done = False

    def start(self) -> bool:
        """Take the upstream socket over; False (nothing changed) if it cannot."""
        if self.left < KERNEL_MIN or self.upstream in self.reactor.getWriters():
            return False
        pipe = open_pipe(PIPE_SIZE, nonblocking=False)
        if pipe is None:
            return False
        self._pipe, self._pipe_size = pipe
        self.upstream.stopReading()
        self._read(True)
        return True

    # What the fill asks of its upstream, routed here while the kernel has it
    def pause(self) -> None:
        self._paused = True
        self._read(False)

    def resume(self) -> None:
        self._paused = False
        if not (self._in_step or self.done):
            self._read(True)

    def stop(self) -> None:
        """Abort the upstream connection (an idle fill, a failed disk); after
        the step in the thread, if one runs: it uses the descriptor."""
        if self.done:
            return
        self._stopping = True
        if not self._in_step:
            self._abort()

    # IReadDescriptor: the upstream socket is readable
    def fileno(self) -> int:
        # -1 once the upstream closed its socket (see docxy.socket_relay).
        return int(self.upstream.fileno())

    def logPrefix(self) -> str:
        return "KernelFill"

    def doRead(self) -> None:
        if self.done or self._in_step:
            return
        self._read(False)
        self._in_step = True
        assert self._pipe is not None
        d = deferToThreadPool(
            self.reactor,
            self.pool,
            _step,
            self._fd,
            self._pipe,
            self._pipe_size,
            self.file_fd,
            self.offset,
            min(self.left, STEP_BYTES),
            lambda count: self.reactor.callFromThread(self._progress, count),
        )
        d.addCallbacks(self._stepped, self._step_crashed)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the socket hang up, or is shutting down."""
        self._reading = False
        if not self.done:
            self._fail_upstream(reason.getErrorMessage())

    def _progress(self, count: int) -> None:
        """``count`` more bytes are in the file (told from the step, in order)."""
        self.left -= count
        self.offset += count
        self.spliced += count
        self.hashing.hash_written(count)  # may pause us: a long queue
        self.moved(count)

    def _stepped(self, step: Step) -> None:
        self._in_step = False
        if self.done:
            return
        if step.disk_error is not None:
            self._stopping = True
            self.disk_failed(step.disk_error)  # the fill stops us, too
        if self._stopping:
            self._abort()
        elif step.upstream_error is not None:
            self._fail_upstream(step.upstream_error)
        elif self.left == 0:
            self._finish()
        elif not self._paused:
            self._read(True)

    def _step_crashed(self, failure: Failure) -> None:
        self._in_step = False
        log.failure("a kernel fill step failed", failure)
        self._fail_upstream(failure.getErrorMessage())

    def _read(self, on: bool) -> None:
        if on and not self._reading:
            self.reactor.addReader(self)
        elif not on and self._reading:
            self.reactor.removeReader(self)
        self._reading = on

    def _finish(self) -> None:
        """All but the last byte are in the file: the parser takes over."""
        self._close()
        self.body.consumed(self.spliced)
        if not self._paused:
            self.upstream.startReading()

    def _fail_upstream(self, why: str) -> None:
        if self.done:
            return
        self.upstream_failed(why)
        self._abort()

    def _abort(self) -> None:
        if self.done:
            return
        self._close()
        self.upstream.abortConnection()  # the fill sees a failed body

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        self._read(False)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def _step(
    sock: int,
    pipe: tuple[int, int],
    pipe_size: int,
    file_fd: int,
    offset: int,
    budget: int,
    progress: Callable[[int], None],
) -> Step:
    """In a disk thread: socket -> pipe -> file at ``offset``, until the
    socket has nothing more for now or ``budget`` bytes moved; ``progress(n)``
    as each pipeful is in the file, so hashing and sending start at once."""
    moved = 0
    while moved < budget:
        try:
            count = os.splice(
                sock, pipe[1], min(budget - moved, pipe_size), flags=_MOVE | _NONBLOCK
            )
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            return Step(upstream_error=os.strerror(e.errno or 0))
        if count == 0:
            return Step(upstream_error="upstream closed the connection")
        at = offset + moved
        written = 0
        try:
            while written < count:
                try:
                    written += os.splice(
                        pipe[0], file_fd, count - written, None, at + written, _MOVE
                    )
                except InterruptedError:
                    continue
        except OSError as e:  # the file refused them: the fill ends
            return Step(disk_error=e)
        moved += count
        progress(count)
    return Step()
