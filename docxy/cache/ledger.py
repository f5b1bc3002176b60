"""What Docxy learned from its upstreams, kept in the cache directory.

Which repositories are public, which digests belong to which repository,
which tag pointed where (per Accept set), which credential was allowed
what, the last challenge of each upstream: without it, a Docxy restarted
while its upstream is down or rate-limiting could serve nothing it holds.

One SQLite database (``DIR/ledger.sqlite``, standard library, WAL mode),
written by one thread of its own, one small transaction per batch of
changes, so a crash or ``kill -9`` loses at most the last batch and never
leaves a half-written change; a tag change writes one row, never a whole
file. Reads never touch the database: every table is loaded into memory at
start and kept there (reads of small rows on the reactor thread cost
nothing). Bounded: each table keeps at most ``max_rows`` rows (oldest out)
and rows older than ``max_age`` are pruned, in memory and on disk alike.

Credentials and tokens never reach the database, only keyed hashes of them
(:class:`Keys`, HMAC-SHA-256 with a random secret kept in ``DIR/secret``,
mode 0600).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import queue
import sqlite3
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..secret_file import keep_private, read_or_create
from .ledger_db import connect

log = Logger()

DB_NAME = "ledger.sqlite"
SECRET_NAME = "secret"
MAX_ROWS = 100_000
MAX_AGE = 30 * 24 * 3600.0  # evidence older than this is no evidence
PRUNE_INTERVAL = 3600.0
MAX_BATCH = 500  # change sets per transaction
MAX_UNWRITTEN = 10_000  # change sets kept while the disk takes no writes

# One row per upstream, true until the upstream says otherwise: never aged out.
AGELESS = frozenset({"challenges"})

Key = tuple[str, ...]
Value = tuple[str, ...]  # every column is text, but the stamp
Statement = tuple[str, Sequence[str | float]]

# name -> (key columns, value columns); every table also has ``stamp``
# (when the row was last confirmed), by which it is ordered and pruned.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "public": (("upstream", "repo"), ()),
    "members": (("upstream", "repo", "digest"), ()),
    "grants": (("upstream", "repo", "digest", "credential"), ()),
    "tags": (("upstream", "repo", "tag", "accept"), ("digest", "media_type")),
    "challenges": (("upstream", "url"), ("realm", "service")),
    "tokens": (("token",), ("principal", "expires")),
}


class Keys:
    """Keyed hashes: what identifies a credential without being one."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def of(self, purpose: str, value: bytes) -> str:
        mac = hmac.new(self._secret, purpose.encode() + b"\0" + value, hashlib.sha256)
        return mac.hexdigest()[:40]

    @classmethod
    def in_directory(cls, root: Path) -> Keys:
        """The directory's secret, created (0600) on first use."""
        path = root / SECRET_NAME
        secret = read_or_create(path, lambda: os.urandom(32))
        if len(secret) < 32:
            raise OSError(f"{path} is damaged (too short)")
        keep_private(path, "it tells which credential was allowed what")
        return cls(secret)


class Table:
    """One table in memory, oldest confirmation first; changes go to the writer."""

    def __init__(
        self,
        ledger: Ledger,
        name: str,
        max_rows: int,
        rows: Iterator[tuple[str | float, ...]],
    ) -> None:
        self.ledger = ledger
        self.name = name
        self.max_rows = max_rows
        keys, values = SCHEMA[name]
        self._arity = len(keys)
        columns = ", ".join((*keys, *values, "stamp"))
        marks = ", ".join("?" * (len(keys) + len(values) + 1))
        self._upsert = f"INSERT OR REPLACE INTO {name} ({columns}) VALUES ({marks})"
        where = " AND ".join(f"{k} = ?" for k in keys)
        self._delete = f"DELETE FROM {name} WHERE {where}"
        self.rows: OrderedDict[Key, tuple[Value, float]] = OrderedDict()
        for row in rows:
            self.rows[tuple(str(v) for v in row[: self._arity])] = (
                tuple(str(v) for v in row[self._arity : -1]),
                float(row[-1]),
            )

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: Key) -> tuple[Value, float] | None:
        """(values, stamp) of a row, or None."""
        return self.rows.get(key)

    def stamp(self, key: Key) -> float | None:
        row = self.rows.get(key)
        return None if row is None else row[1]

    def put(self, key: Key, values: Value, stamp: float) -> None:
        old = self.rows.get(key)
        if old is not None and old == (values, stamp):
            return
        self.rows[key] = (values, stamp)
        self.rows.move_to_end(key)
        statements: list[Statement] = [(self._upsert, (*key, *values, stamp))]
        while len(self.rows) > self.max_rows:
            gone, _ = self.rows.popitem(last=False)
            statements.append((self._delete, gone))
        self.ledger.write(statements)

    def prune(self, before: float) -> None:
        """Forget rows last confirmed before ``before``."""
        pruned = False
        while self.rows:  # oldest first: stop at the first young row
            key, (_, stamp) = next(iter(self.rows.items()))
            if stamp >= before:
                break
            del self.rows[key]
            pruned = True
        if pruned:
            self.ledger.write([(f"DELETE FROM {self.name} WHERE stamp < ?", (before,))])


class Ledger:
    """The database, its in-memory tables and its writer thread."""

    def __init__(
        self,
        root: Path,
        clock: IReactorTime,
        max_rows: int = MAX_ROWS,
        max_age: float = MAX_AGE,
    ) -> None:
        self.path = root / DB_NAME
        self.clock = clock
        self.max_age = max_age
        self._writer = _Writer(self.path)
        # A cache directory in trouble must not stop Docxy: it starts
        # knowing nothing, and writes what it learns once it can.
        try:
            self.keys = Keys.in_directory(root)
        except OSError as e:
            self._cannot_read(e)
            self.keys = Keys(os.urandom(32))
        try:
            tables = self._load(max_rows)
        except (OSError, sqlite3.Error) as e:
            self._cannot_read(e)
            tables = {name: Table(self, name, max_rows, iter(())) for name in SCHEMA}
        self.public = tables["public"]
        self.members = tables["members"]
        self.grants = tables["grants"]
        self.tags = tables["tags"]
        self.challenges = tables["challenges"]
        self.tokens = tables["tokens"]
        self._writer.start()

    def _cannot_read(self, error: OSError | sqlite3.Error) -> None:
        log.warn(
            "cannot read {path} ({why}): starting with no evidence",
            path=str(self.path),
            why=str(error),
        )

    def _load(self, max_rows: int) -> dict[str, Table]:
        """Every table, read only: what is aged out or over the cap is
        deleted by the writer, so a start never waits for another worker's
        write (WAL readers take no lock a writer holds)."""
        tables = {}
        deletes: list[Statement] = []
        before = self.clock.seconds() - self.max_age
        with contextlib.closing(connect(self.path)) as db:
            _create(db)
            for name in SCHEMA:
                aged = name not in AGELESS
                if aged:
                    deletes.append((f"DELETE FROM {name} WHERE stamp < ?", (before,)))
                rows = db.execute(
                    f"SELECT * FROM (SELECT * FROM {name} "
                    f"{'WHERE stamp >= ? ' if aged else ''}"
                    "ORDER BY stamp DESC LIMIT ?) ORDER BY stamp",
                    (before, max_rows) if aged else (max_rows,),
                )
                table = tables[name] = Table(
                    self, name, max_rows, iter(rows.fetchall())
                )
                # Over the cap (the cap was lowered): drop what was not loaded.
                if len(table) == max_rows:
                    oldest = min(stamp for _, stamp in table.rows.values())
                    deletes.append((f"DELETE FROM {name} WHERE stamp < ?", (oldest,)))
        if deletes:
            self.write(deletes)
        return tables

    def write(self, statements: list[Statement]) -> None:
        """Queue statements that must be applied together (one transaction)."""
        self._writer.submit(statements)

    def prune(self) -> None:
        """Forget everything older than ``max_age``."""
        before = self.clock.seconds() - self.max_age
        for table in (self.public, self.members, self.grants, self.tags, self.tokens):
            table.prune(before)

    def sync(self) -> None:
        """Block until everything queued so far is committed (tests, shutdown)."""
        self._writer.sync()

    def close(self) -> None:
        """Commit what is queued and stop the writer."""
        self._writer.close()

    def on_error(self, report: Callable[[OSError], None]) -> None:
        """``report`` (called in the writer thread) instead of a log line."""
        self._writer.on_error = report


def _create(db: sqlite3.Connection) -> None:
    for name, (keys, values) in SCHEMA.items():
        columns = ", ".join(f"{c} TEXT NOT NULL" for c in (*keys, *values))
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {name} ({columns}, stamp REAL NOT NULL, "
            f"PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID"
        )
        db.execute(f"CREATE INDEX IF NOT EXISTS {name}_stamp ON {name} (stamp)")


class _Writer:
    """The one thread that writes: batches of statements, one transaction each.

    The database is opened for each batch and closed once the queue is
    empty, so an idle Docxy holds no file of the cache open for writing (a
    read-only remount of the cache directory must not be refused). A batch
    that cannot be written (disk full, read-only, directory removed) is
    kept, bounded, and written with the next one that can.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[list[Statement] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(
            target=self._run, name="docxy-ledger", daemon=True
        )
        self._unwritten: deque[list[Statement]] = deque(maxlen=MAX_UNWRITTEN)
        self._failing = False
        # Called (in the writer thread) with the first error of a bad spell.
        self.on_error: Callable[[OSError], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, statements: list[Statement]) -> None:
        self._queue.put(statements)

    def sync(self) -> None:
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            events: list[threading.Event] = []
            stop = False
            taken = 0
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    self._unwritten.append(item)
                    taken += 1
                if stop or taken >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if self._unwritten:
                self._commit()
            for event in events:
                event.set()
            if stop:
                return

    def _commit(self) -> None:
        batch = list(self._unwritten)
        for attempt in (1, 2):
            try:
                self._write(batch)
                break
            except (sqlite3.Error, OSError) as e:
                # Removed under Docxy mid-write (an operator wiping the
                # cache): SQLite says "disk I/O error"; a new file is made.
                if attempt == 1 and not self.path.exists():
                    continue
                if not self._failing:
                    self._failing = True
                    self._report(e)
                return
        self._unwritten.clear()
        if self._failing:
            self._failing = False
            log.info("writing {path} again", path=str(self.path))

    def _write(self, batch: list[list[Statement]]) -> None:
        # Removed under Docxy (an operator wiping the cache): recreated.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(connect(self.path)) as db:
            try:
                self._apply(db, batch)
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                _create(db)  # the file was removed under Docxy
                self._apply(db, batch)

    @staticmethod
    def _apply(db: sqlite3.Connection, batch: list[list[Statement]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statements in batch:
                for sql, params in statements:
                    db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _report(self, error: sqlite3.Error | OSError) -> None:
        text = str(error)
        failure: OSError | None = error if isinstance(error, OSError) else None
        for words, code in _ERRNOS:
            if failure is None and words in text:
                failure = OSError(code, f"{os.strerror(code)} ({text})")
        if failure is not None and self.on_error is not None:
            self.on_error(failure)  # the directory's trouble, not the ledger's
        else:
            log.warn(
                "cannot write {path} ({why}): what Docxy learns now is kept in "
                "memory until it can",
                path=str(self.path),
                why=text,
            )


# SQLite's words for what the cache directory's health knows by errno.
_ERRNOS = (
    ("readonly", errno.EROFS),
    ("disk is full", errno.ENOSPC),
    ("unable to open", errno.ENOENT),
    ("disk I/O error", errno.EIO),
)
