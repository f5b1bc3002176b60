"""A secret file made whole or not at all, by whichever process comes first.

Docxy keeps two: the token key (:mod:`docxy.client_tokens`) and the cache
directory's hashing secret (:mod:`docxy.cache.ledger`). ``--workers``
starts several processes at once, each of which may find the file missing:
created in place, a second process could read it empty (or half written)
and fail, or worse, go on with a key of its own. So the secret is written
to a temporary file and linked into place: a reader sees the whole secret
or no file, and a process that loses the race takes the winner's.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

log = Logger()


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes in ``path``; if it is missing, ``make()``'s, written there 0600."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = make()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)  # never replaces a file another made
    except FileExistsError:
        return path.read_bytes()
    finally:
        temporary.unlink(missing_ok=True)
    return data


def keep_private(path: Path, why: str) -> None:
    """Make ``path`` 0600 if others may read it; a warning if that fails."""
    if path.stat().st_mode & 0o077 == 0:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as e:  # a read-only mount (a Kubernetes Secret, say)
        log.warn(
            "{path} is readable by other users and cannot be made 0600 ({error}): "
            "{why}",
            path=str(path),
            error=e.strerror,
            why=why,
        )
