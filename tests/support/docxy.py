"""Run the real ``twistd docxy`` (and ``docxy.prefetch``) from this working tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .processes import LOOPBACK, NO_INTERNET_ENV, ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def twistd_env() -> dict[str, str]:
    """PYTHONPATH so twistd finds this tree's package and plugin."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class Docxy(ManagedProcess):
    """``twistd -n docxy`` on a free loopback port.

    A plain proxy (``--no-cache``) unless ``extra_args`` name a
    ``--cache-dir``: the default cache directory is shared by the whole
    machine, and only one Docxy may hold it.
    """

    def __init__(
        self,
        upstream: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        library_prefix: str | None = "on",  # None: not given (auto)
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.hostport = f"{LOOPBACK}:{self.port}"
        argv = [
            TWISTD,
            "-n",
            "--pidfile=",
            "docxy",
            "--port",
            f"tcp:{self.port}:interface={LOOPBACK}",
            "--public-url",
            self.url,
            "--upstream",
            upstream,
            *(["--library-prefix", library_prefix] if library_prefix else []),
            *extra_args,
        ]
        if "--cache-dir" not in extra_args:
            argv.append("--no-cache")
        super().__init__(argv, log_path, env=twistd_env(), cwd=log_path.parent)
        self.wait_for_port(self.port)


# The ``docxy_factory`` fixture (tests/conftest.py):
# ``factory(upstream_url, *extra_args, library_prefix="on") -> Docxy``,
# each Docxy stopped (and checked for a crash) when the test ends.
DocxyFactory = Callable[..., Docxy]


def with_metrics(
    factory: DocxyFactory, upstream: str, *extra_args: str
) -> tuple[Docxy, int]:
    """A Docxy from ``factory`` with a ``--metrics-port`` of its own, and the port."""
    port = free_port()
    metrics = ("--metrics-port", f"tcp:{port}:interface={LOOPBACK}")
    return factory(upstream, *extra_args, *metrics), port


def run_docxy(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``twistd -n docxy ARGS`` run to its end (``--help``, ``--check-config``,
    a start that must stop with one line): this tree's code, a bare PATH, a
    minute at most. ``prefix`` runs it as another user (``setpriv ...``)."""
    return subprocess.run(
        [*prefix, TWISTD, "-n", "--pidfile=", "docxy", *args],
        capture_output=True,
        text=True,
        env={**twistd_env(), "PATH": "/usr/bin:/bin", **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def prefetch(
    docxy: Docxy, *args: str, mirror: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m docxy.prefetch --mirror <docxy> ARGS``, as a user runs it."""
    mirror = mirror or docxy.url
    clean = {k: v for k, v in os.environ.items() if k != "DOCXY_PREFETCH_USER"}
    return subprocess.run(
        [sys.executable, "-m", "docxy.prefetch", "--mirror", mirror, *args],
        env={**clean, **twistd_env(), **NO_INTERNET_ENV, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# --- Docxy's access log -----------------------------------------------------

ACCESS_RE = re.compile(r"method=(\S+) path=(\S+) status=(\d+)")
UPSTREAM_STATUS_RE = re.compile(r"upstream_status=(\S+)")


@dataclass(frozen=True)
class Access:
    """One access-log line of Docxy."""

    method: str
    path: str  # as logged; may carry the query string
    status: int
    upstream_status: str = "-"  # "-": Docxy answered without asking upstream
    line: str = ""

    @property
    def bare_path(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.path).query, keep_blank_values=True)


class AccessLog:
    """Docxy's access-log lines, read from an offset so each test sees its own.

    Docxy writes the line when it finishes a response, before the bytes reach
    the client, so a client that has its answer finds the line in the log.
    """

    def __init__(self, docxy: Docxy) -> None:
        self.docxy = docxy
        self.offset = len(docxy.log_text())

    def lines(self) -> list[str]:
        return self.docxy.log_text()[self.offset :].splitlines()

    def entries(self) -> list[Access]:
        found = []
        for line in self.lines():
            m = ACCESS_RE.search(line)
            if m:
                up = UPSTREAM_STATUS_RE.search(line)
                found.append(
                    Access(
                        m.group(1),
                        m.group(2),
                        int(m.group(3)),
                        up.group(1) if up else "-",
                        line,
                    )
                )
        return found

    def dump(self) -> str:
        return "\n".join(self.lines())
