"""Pipes for ``splice(2)``: the kernel paths of a proxied body
(:mod:`docxy.socket_relay`) and of a cold fill (:mod:`docxy.cache.kernel_fill`)."""

from __future__ import annotations

import fcntl
import os

from twisted.internet.interfaces import IReactorFDSet


def open_pipe(size: int, nonblocking: bool) -> tuple[tuple[int, int], int] | None:
    """A pipe (read end, write end) for ``splice(2)`` and its capacity: ``size``
    if the kernel allows, its default otherwise; None if none can be made."""
    flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    try:
        read, write = os.pipe2(flags)
    except OSError:
        return None
    try:
        try:
            capacity = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, size)
        except OSError:  # past /proc/sys/fs/pipe-max-size or the user's pages
            capacity = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
    except OSError:
        os.close(read)
        os.close(write)
        return None
    return (read, write), capacity


def can_splice(reactor: object) -> bool:
    return hasattr(os, "splice") and IReactorFDSet.providedBy(reactor)
