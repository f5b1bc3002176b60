"""``--workers N``: the process that owns the sockets and keeps N workers running.

The supervisor serves nothing itself. At privileged start it takes the
cache directory's lock and listens on every port (:mod:`docxy.shared_ports`),
so a busy port or a cache directory in use still stops Docxy with one line
before anything runs. Then it starts N workers (:mod:`docxy.worker`), each
inheriting the sockets and the lock. A worker that dies is started again,
after a delay that doubles while workers keep dying young (a worker that
ran a minute starts the count again). SIGTERM closes each worker's
lifeline; each drains its transfers (:mod:`docxy.drain`) and exits, and the
supervisor exits 0 once all did. Workers still running ``shutdown-timeout``
plus a grace period later are killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from .cache.directory import CacheLock
from .config import Config
from .drain import stop_on_sigterm
from .shared_ports import SharedSocket, acme_spec, bind
from .tls.endpoint import acquire_manager, release_manager
from .tls.manager import CertificateManager
from .worker import Setup

log = Logger()

# Restart delays: the first, the longest, and the life that resets them.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_LIFE = 60.0
# Beyond shutdown-timeout: how long a draining worker may take to exit.
EXIT_GRACE = 10.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _probes_dir(cache_dir: Path | None) -> Path:
    """A private directory for the workers' probe sockets: in the cache
    directory (writable where the root file system is not), else a temp one."""
    if cache_dir is not None:
        path = cache_dir / "probes"
        # A socket path has at most 107 bytes.
        if len(str(path / "worker-00.sock").encode()) < 100:
            path.mkdir(mode=0o700, exist_ok=True)
            return path
    return Path(tempfile.mkdtemp(prefix="docxy-probes-"))


class _Worker(ProcessProtocol):
    """One worker process: its log lines in, its end reported."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            if line.strip():
                self._publish(line)

    def _publish(self, line: bytes) -> None:
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            log.info("worker {index}: {line}", index=self.index, line=line)
            return
        event.setdefault("worker", self.index)
        globalLogPublisher(event)

    def errReceived(self, data: bytes) -> None:
        # A worker's stderr: tracebacks of a crash, warnings of libraries.
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            log.warn(
                "worker {index}: {line}",
                index=self.index,
                line=line.decode("utf-8", "replace"),
            )

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Holds the sockets and the cache lock; runs ``config.workers`` workers."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        lock: CacheLock | None,
        log_to_stdout: bool = False,
    ) -> None:
        self.config = config
        # Workers write log lines to the standard output they inherit (no
        # round trip through this process); else they send events here.
        self.log_to_stdout = log_to_stdout
        self.reactor = reactor
        self.lock = lock
        self.ports: list[IListeningPort] = []
        self.sockets: list[SharedSocket] = []
        # Each worker's /metrics and /ready (docxy.worker_probes).
        self.probes_dir: Path | None = None
        if config.metrics_port is not None:
            self.probes_dir = _probes_dir(config.cache_dir)
        self.workers: dict[int, _Worker] = {}
        self.failures: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        self.managers: list[CertificateManager] = []  # of acme: ports (docxy.tls)

    def privilegedStartService(self) -> None:
        from .listeners import reason

        super().privilegedStartService()
        for port in self.config.ports:
            try:
                listening, shared = bind(self.reactor, port)
                self.ports.append(listening)
                self.sockets.append(shared)
                spec = acme_spec(port)
                if spec is not None:
                    # The one certificate manager; the workers serve what it
                    # stores and answer the challenges it publishes.
                    self.managers.append(acquire_manager(self.reactor, spec))
            except Exception as e:
                sys.stderr.write(f"docxy: cannot listen on {port}: {reason(e)}\n")
                sys.stderr.flush()
                raise SystemExit(1) from None

    def probe_sockets(self) -> dict[int, Path]:
        """index -> the probes socket of each worker running now."""
        if self.probes_dir is None:
            return {}
        return {i: self.probe_socket(i) for i in sorted(self.workers)}

    def probe_socket(self, index: int) -> Path:
        assert self.probes_dir is not None
        return self.probes_dir / f"worker-{index}.sock"

    def startService(self) -> None:
        super().startService()
        stop_on_sigterm(self.reactor)
        log.info(
            "supervisor: {count} workers share {ports}",
            count=self.config.workers,
            ports=" ".join(self.config.ports),
        )
        for manager in self.managers:
            manager.start()
        for index in range(self.config.workers):
            self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        worker = _Worker(self, index)
        fds: dict[int, int | str] = {0: "w", 1: 1 if self.log_to_stdout else "r"}
        fds[2] = "r"
        inherited = [s.fd for s in self.sockets]
        if self.lock is not None:
            inherited.append(self.lock.fd)
        fds.update({fd: fd for fd in inherited})
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        transport = self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "docxy.worker"],
            env=env,
            childFDs=fds,
        )
        setup = Setup(
            index,
            self.config,
            tuple(self.sockets),
            None if self.probes_dir is None else str(self.probe_socket(index)),
            None if self.lock is None else self.lock.fd,
            self.log_to_stdout,
        )
        transport.write(setup.encode())
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        how = (
            "exited"
            if reason.check(ProcessDone)
            else f"ended: {reason.getErrorMessage()}"
        )
        if self._stopping:
            log.info("worker {index} {how}", index=index, how=how)
            return
        lived = self.reactor.seconds() - worker.started
        failures = 0 if lived >= HEALTHY_LIFE else self.failures.get(index, 0) + 1
        self.failures[index] = failures
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - 1))
        log.warn(
            "worker {index} {how} after {lived:.0f}s; starting it again in {delay:g}s",
            index=index,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._restarts[index] = self.reactor.callLater(delay, self._start, index)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            if worker.transport is not None:
                worker.transport.closeStdin()  # the lifeline: drain and exit
        kill = self.reactor.callLater(
            self.config.shutdown_timeout + EXIT_GRACE, self._kill, workers
        )
        done = defer.gatherResults([w.ended for w in workers])

        def closed(_: object) -> defer.Deferred[Any]:
            if kill.active():
                kill.cancel()
            stops = [defer.maybeDeferred(p.stopListening) for p in self.ports]
            stops += [release_manager(m) for m in self.managers]
            if self.probes_dir is not None:
                shutil.rmtree(self.probes_dir, ignore_errors=True)  # dead sockets
            return defer.gatherResults(stops)

        return done.addCallback(closed).addCallback(lambda _: None)

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called and worker.transport is not None:
                log.warn("worker {index} did not exit; killing it", index=worker.index)
                worker.transport.signalProcess(signal.SIGKILL)
