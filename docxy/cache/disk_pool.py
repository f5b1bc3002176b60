"""The threads that read and hash cache files, off the reactor thread."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.python.threadpool import ThreadPool

from .hashing import HashThread


class DiskPool(Service):
    """A few threads for blocking file reads and hashes, and the one thread
    fills hash in (:attr:`hashing`), as a Service.

    Under twistd it starts with Docxy and is stopped (its threads joined)
    when the service tree stops. A Site built outside a service tree (the
    in-process tests) starts it on first use and stops it with the reactor.
    """

    name = "disk-pool"

    def __init__(self, reactor: Any, max_threads: int = 4) -> None:
        self.reactor = reactor
        self._threads = ThreadPool(
            minthreads=1, maxthreads=max_threads, name="docxy-disk"
        )
        self.hashing = HashThread(reactor)

    def threads(self) -> ThreadPool:
        """The pool, started."""
        if not self._threads.started:
            self._threads.start()
            if not self.running:
                self.reactor.addSystemEventTrigger("during", "shutdown", self._stop)
        return self._threads

    def startService(self) -> None:
        super().startService()
        if not self._threads.started:
            self._threads.start()

    def stopService(self) -> None:
        super().stopService()
        self._stop()

    def hash_thread(self) -> HashThread:
        """The fills' hash thread (started on first use)."""
        self.threads()  # the shutdown trigger outside a service tree
        return self.hashing

    def _stop(self) -> None:
        self.hashing.stop()
        if self._threads.started and not self._threads.joined:
            self._threads.stop()
