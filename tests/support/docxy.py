"""Run the real ``twistd docxy`` from this working tree."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .processes import LOOPBACK, ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def twistd_env() -> dict[str, str]:
    """PYTHONPATH so twistd finds this tree's package and plugin."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class Docxy(ManagedProcess):
    """``twistd -n docxy`` on a free loopback port."""

    def __init__(
        self,
        upstream: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        library_prefix: str = "on",
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
            "--library-prefix",
            library_prefix,
            *extra_args,
        ]
        super().__init__(argv, log_path, env=twistd_env(), cwd=log_path.parent)
        self.wait_for_port(self.port)
