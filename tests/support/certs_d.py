"""A client's per-host CA directory (``certs.d/HOST:PORT/ca.crt``), for one test.

dockerd and containers/image (podman, CRI-O, skopeo) read a mirror's CA
from a directory named after the host and port clients use. Tests create
only their own ``HOST:PORT`` directory and remove it (and a base directory
they had to create) afterwards, so a machine's own entries are untouched.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def certs_d_entry(base: Path, hostport: str, ca: Path) -> Iterator[Path]:
    created_base = not base.exists()
    target = base / hostport
    target.mkdir(parents=True)
    try:
        shutil.copy(ca, target / "ca.crt")
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        if created_base:
            with contextlib.suppress(OSError):
                base.rmdir()
