"""The state directory: the ACME account key and one PEM file per name.

Layout (directories 0700, every file 0600, each written atomically: temp
file, fsync, rename, fsync the directory)::

    account.key                  the ACME account's private key (any CA)
    <ca>/<name>.pem              private key + certificate chain for <name>

``<ca>`` is named after the directory URL, so switching from a staging CA
to production orders anew instead of serving the staging certificate.

Files are tiny and written a few times a year, so this is plain blocking
I/O on the reactor thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from twisted.logger import Logger

from .certs import KeyAndChain, PrivateKey, key_pem, load_key, new_key

log = Logger(namespace="docxy.acme")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Readers see the old file or the new one, never a part of either."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ca_dirname(directory_url: str) -> str:
    """``https://acme-v02.api.letsencrypt.org/directory`` ->
    ``acme-v02.api.letsencrypt.org_directory``."""
    parts = urlsplit(directory_url)
    raw = f"{parts.netloc}{parts.path}".rstrip("/")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", raw).strip("._") or "ca"


class AcmeStore:
    """The ACME state directory, private to Docxy's user, written atomically."""

    def __init__(self, path: Path, directory_url: str) -> None:
        self.path = path
        self.certs = path / ca_dirname(directory_url)

    def prepare(self) -> None:
        """Create the directories private to this user (or tighten them)."""
        for d in (self.path, self.certs):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            if d.stat().st_mode & 0o077:
                d.chmod(0o700)

    def account_key(self) -> PrivateKey:
        """The stored account key, created on first use."""
        path = self.path / "account.key"
        if path.exists():
            return load_key(path.read_bytes())
        key = new_key()
        atomic_write(path, key_pem(key))
        log.info("created a new ACME account key in {path}", path=str(path))
        return key

    def cert_path(self, name: str) -> Path:
        return self.certs / f"{name}.pem"

    def load(self, name: str) -> KeyAndChain | None:
        """The stored certificate for ``name``, or None (missing or unusable)."""
        path = self.cert_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            stored = KeyAndChain.from_pem(data)
        except ValueError as e:
            log.error("ignoring unusable {path}: {reason}", path=str(path), reason=e)
            return None
        if not stored.covers(name):
            log.warn(
                "ignoring {path}: it does not name {name}", path=str(path), name=name
            )
            return None
        return stored

    def save(self, name: str, issued: KeyAndChain) -> None:
        atomic_write(self.cert_path(name), issued.to_pem())
