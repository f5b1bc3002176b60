"""A client reading a fill's growing file: by ``sendfile(2)`` on plain TCP,
by reads otherwise.

Every reader of a fill but its first client (and the first client too once
the fill goes through the kernel, or once it lags) reads the file the fill
writes. On a plain TCP client, with the length known, the kernel sends it
(:class:`~docxy.cache.kernel_sender.KernelSender`): no read on the reactor
thread, nothing held in memory for a slow client. TLS clients, and bodies
of unknown length, get :class:`~docxy.cache.sender.FileSender`'s reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.server import Request

from ..plain_tcp import kernel_transport
from .fill import Fill
from .kernel_sender import KernelSender
from .sender import FileSender


def read_fill(
    request: Request,
    fill: Fill,
    fd: int,
    offset: int,
    reactor: Any,
    pool: Any,
    idle_timeout: float,
    on_end: Callable[[str, int], None],
    resume: Callable[[int], None],
) -> None:
    """Send ``fill``'s file from ``offset`` on (``fd``: the sender owns it)."""
    transport = kernel_transport(request)
    if transport is not None and fill.length is not None:
        KernelSender(
            request,
            transport,
            fd,
            offset,
            fill.length,
            reactor,
            idle_timeout,
            on_end,
            fill=fill,
            resume=resume,
        ).start()
        return
    # The headers now, as the kernel's sender does: not with the first byte,
    # which another worker's fill may be slow to write.
    request.write(b"")
    FileSender(
        request,
        fd,
        offset,
        fill.length,
        reactor,
        pool,
        fill=fill,
        on_end=on_end,
        resume=resume,
        idle=(reactor, idle_timeout),
    ).start()
