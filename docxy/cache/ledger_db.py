"""Opening the ledger's SQLite file (:mod:`docxy.cache.ledger`) from any
worker at any moment.

Several processes open it: every ``--workers`` worker, at start and for
each batch its writer commits. SQLite
makes a statement wait (``BUSY_TIMEOUT``) for a lock another process holds,
except in one place: the switch of a new file to WAL, which the loser of a
race is refused at once. :func:`connect` tries that again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT = 1.0  # seconds a statement waits for another process's lock
# Switching a new database to WAL: how long to keep trying, and the pause
# between tries.
SWITCH_PATIENCE = 10.0
SWITCH_PAUSE = 0.01


def connect(path: Path) -> sqlite3.Connection:
    """The ledger, in WAL mode; raises sqlite3.Error as SQLite does."""
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        _switch_to_wal(db)
        # WAL + NORMAL: a crash of the process never loses a commit; a power
        # loss may lose the last few, and never corrupts the database.
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """WAL mode (kept in the file: once switched, only ever checked).

    The switch of a new file upgrades its read lock to a write lock, and
    when another process holds that one at the moment (``--workers``
    starting together, or recreating a removed ledger), SQLite answers
    one of them "database is locked" at once, without waiting (waiting
    could deadlock). So the loser tries again, for a while: the winner's
    switch takes milliseconds.
    """
    deadline = time.monotonic() + SWITCH_PATIENCE
    while True:
        try:
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            busy = e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        _pause(SWITCH_PAUSE)


def _pause(seconds: float) -> None:
    """Between tries of the WAL switch (a seam for the tests)."""
    time.sleep(seconds)
