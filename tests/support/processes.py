"""Start and stop real processes by PID, and wait for them to be ready.

Readiness is polled (a condition checked until it holds or a deadline
passes), never assumed after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

# For every client process: they all fall back to the real registry when a
# mirror fails. Nothing listens on port 9 and loopback is exempt, so a pass
# proves Docxy served the pull and no traffic left the machine.
NO_INTERNET_ENV: dict[str, str] = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process with its output in a log file, stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.stopped = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self.popen.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            return port_open(port)

        try:
            wait_until(ready, timeout, f"{self.argv[0]} to listen on {port}")
        except BaseException:
            # The caller never gets the object to stop: do it here, or a
            # half-started daemon outlives the test run.
            self.stop()
            raise

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> None:
        wait_until(lambda: needle in self.log_text(), timeout, repr(needle))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group (children included)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        self.stopped = True  # deliberately: not a crash
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()
        return self.popen.returncode


class ProcessGroup:
    """Every process a script started, so its cleanup never misses one."""

    def __init__(self) -> None:
        self.managed: list[ManagedProcess] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def stop_all(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.terminate()
        for p in self.popens:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for m in reversed(self.managed):
            try:
                m.stop()
            except Exception as exc:  # stop the others all the same
                print(f"WARNING: stopping {m.argv[:4]}: {exc!r}", file=sys.stderr)
