"""One of ``--workers N``: a whole Docxy on sockets its supervisor made.

Started by :mod:`docxy.supervisor` as ``python -m docxy.worker``. Its
standard input is the lifeline: the supervisor writes the setup there (the
validated configuration and which inherited descriptors are which, so a
worker never parses the command line, the environment or the file again
and cannot disagree with its supervisor), then keeps the pipe open. The
pipe's end is the order to stop: the supervisor closes it on SIGTERM, and
the kernel closes it if the supervisor dies, so no worker outlives it.
SIGTERM and SIGINT themselves are ignored here: a service manager that
signals the whole group (systemd's ``KillMode=control-group``, Ctrl-C)
stops Docxy through the supervisor, which stops each worker once.

Log lines: where twistd logs to standard output (``-n``, as under systemd
and in containers), each worker writes its own lines there in the same
format, with no round trip through the supervisor (one per request would
make the supervisor the bottleneck). Where twistd logs to a file, workers
send their events as JSON lines to the supervisor, which logs them to that
file (rotated by twistd) in its format.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import main as twisted_main
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import (
    ILogObserver,
    LogEvent,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .config import Config
from .logs import worker_observer
from .shared_ports import SharedSocket, adopt

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class Setup:
    """What the supervisor tells a worker, pickled on its standard input."""

    index: int
    config: Config
    sockets: tuple[SharedSocket, ...]
    # Where this worker serves /metrics and /ready for its supervisor.
    probes_path: str | None
    cache_lock_fd: int | None
    # Write log lines to the shared standard output; else events as JSON
    # for the supervisor to log.
    log_direct: bool = False

    def encode(self) -> bytes:
        data = pickle.dumps(self)
        return _LENGTH.pack(len(data)) + data


def read_setup(fd: int = 0) -> Setup:
    def exactly(count: int) -> bytes:
        chunks = b""
        while len(chunks) < count:
            more = os.read(fd, count - len(chunks))
            if not more:
                raise SystemExit("docxy worker: the supervisor went away")
            chunks += more
        return chunks

    (length,) = _LENGTH.unpack(exactly(_LENGTH.size))
    setup = pickle.loads(exactly(length))
    assert isinstance(setup, Setup)
    return setup


@implementer(IReadDescriptor)
class _Lifeline:
    """The read end of the supervisor's pipe; its end stops the worker."""

    def __init__(self, fd: int, gone: Any) -> None:
        self.fd = fd
        self.gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return twisted_main.CONNECTION_LOST
        return None if data else twisted_main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self.gone()

    def logPrefix(self) -> str:
        return "supervisor"


def run(setup: Setup) -> None:
    from twisted.internet import reactor

    from .cache.directory import CacheLock
    from .service import WorkerSetup, make_service

    config = setup.config
    out = os.fdopen(1, "w", encoding="utf-8", errors="replace", closefd=False)
    observer = (
        worker_observer(config.log_format, out)
        if setup.log_direct
        else jsonFileLogObserver(out, recordSeparator="")
    )

    @implementer(ILogObserver)
    def tagged(event: LogEvent) -> None:  # JSON lines name the worker
        event.setdefault("worker", setup.index)
        observer(event)

    globalLogBeginner.beginLoggingTo([tagged], redirectStandardIO=False)
    lock = None
    if setup.cache_lock_fd is not None and config.cache_dir is not None:
        # The supervisor's lock: shared by this open file, never taken again.
        lock = CacheLock(Path(config.cache_dir), setup.cache_lock_fd)
    endpoints = tuple(
        adopt(reactor, port, shared)
        for port, shared in zip(config.ports, setup.sockets, strict=True)
    )
    metrics = None
    if config.metrics_port is not None and setup.probes_path is not None:
        Path(setup.probes_path).unlink(missing_ok=True)  # the worker it replaces
        metrics = (UNIXServerEndpoint(reactor, setup.probes_path, mode=0o600),)
    top = make_service(
        config, reactor, WorkerSetup(setup.index, endpoints, metrics, lock)
    )
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)

    def ignore_signals() -> None:  # after Drain's own handler (see the module)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    reactor.callWhenRunning(ignore_signals)

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    reactor.addReader(_Lifeline(0, stop))
    reactor.run()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup = read_setup()
    run(setup)
    sys.exit(0)


if __name__ == "__main__":
    # The setup is pickled as docxy.worker.Setup: run that module, not this
    # copy of it named __main__.
    from docxy.worker import main as worker_main

    worker_main()
