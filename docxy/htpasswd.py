"""The mirror's own accounts: an htpasswd file of bcrypt hashes.

``htpasswd -B`` writes it (Apache's tool, or distribution's own ``auth``
file format). Only bcrypt is accepted: the older htpasswd hashes (MD5-crypt,
SHA-1, crypt) are too cheap to guess. Passwords are checked by the
maintained ``bcrypt`` library in a thread (a bcrypt check takes tens of
milliseconds, too long for the reactor), and an unknown user costs the same
as a wrong password, so response times do not tell which users exist.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import bcrypt
from twisted.internet import threads

from .config_values import ConfigError
from .errors import RegistryError

# bcrypt checks waiting for or in the thread pool; more are refused at once.
MAX_PENDING_CHECKS = 64

_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
# Checked for unknown users so that they take as long as known ones: made
# at the cost the file's hashes have (htpasswd -B uses 5 unless told).
_DUMMY_PASSWORD = b"docxy-no-such-user"
_DEFAULT_COST = 10


class Accounts:
    """Users and their bcrypt hashes, read once at start."""

    def __init__(self, hashes: dict[str, bytes]) -> None:
        self._hashes = hashes
        self._pending = 0
        costs = Counter(_cost(h) for h in hashes.values())
        costs.pop(None, None)
        cost = costs.most_common(1)[0][0] if costs else None
        self.dummy_cost: int = cost if cost is not None else _DEFAULT_COST
        self._dummy = bcrypt.hashpw(
            _DUMMY_PASSWORD, bcrypt.gensalt(rounds=self.dummy_cost)
        )

    def __len__(self) -> int:
        return len(self._hashes)

    @classmethod
    def load(cls, path: Path) -> Accounts:
        """Raises ConfigError (one line, no hash in it) for a bad file."""
        return cls(read_hashes(path))

    def check_now(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s (blocking: call it in a thread)."""
        hashed = self._hashes.get(user)
        try:
            ok = bcrypt.checkpw(password.encode("utf-8"), hashed or self._dummy)
        except ValueError:
            return False
        return ok and hashed is not None

    async def check(self, user: str, password: str) -> bool:
        """In the reactor's thread pool; a 503 while too many are waiting."""
        if self._pending >= MAX_PENDING_CHECKS:
            raise RegistryError(
                503,
                "UNAVAILABLE",
                "too many logins at once; try again",
                {"limit": MAX_PENDING_CHECKS},
                headers=((b"Retry-After", b"1"),),
            )
        self._pending += 1
        try:
            result: bool = await threads.deferToThread(self.check_now, user, password)
        finally:
            self._pending -= 1
        return result


def read_hashes(path: Path) -> dict[str, bytes]:
    """The file's users and hashes; ConfigError (one line, no hash) if bad."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ConfigError(
            f"htpasswd: cannot read {str(path)!r}: {e.strerror}"
        ) from None
    hashes: dict[str, bytes] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not user or not hashed.startswith(_BCRYPT_PREFIXES):
            raise ConfigError(
                f"htpasswd: line {number} of {str(path)!r} is not user:bcrypt-hash "
                "(create entries with htpasswd -B)"
            )
        hashes[user.decode("utf-8", "replace")] = hashed
    if not hashes:
        raise ConfigError(f"htpasswd: {str(path)!r} has no accounts")
    return hashes


def _cost(hashed: bytes) -> int | None:
    """The cost of a bcrypt hash (``$2y$05$...`` -> 5), None if it has none."""
    digits = hashed[4:6]
    if hashed[6:7] != b"$" or not digits.isdigit() or not 4 <= int(digits) <= 31:
        return None
    return int(digits)
