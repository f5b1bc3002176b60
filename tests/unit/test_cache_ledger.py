"""The ledger: survives kill -9 mid-write consistent, stays bounded, keeps no secret."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from docxy.cache import ledger as ledger_module
from docxy.cache import ledger_db
from docxy.cache.evidence import Evidence
from docxy.cache.ledger import DB_NAME, Keys, Ledger
from docxy.cache.offline import TokenBook

REPO = Path(__file__).resolve().parents[2]


def rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(root / DB_NAME)) as db:
        return db.execute(sql).fetchall()


def open_ledger(root: Path, now: float = 1000.0, **kwargs: float) -> Ledger:
    clock = Clock()
    clock.advance(now)
    return Ledger(root, clock, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The ledger's log lines, as text."""
    seen: list[str] = []

    @implementer(ILogObserver)
    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == ledger_module.__name__:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


# --- crash safety -------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from twisted.internet.task import Clock
    from docxy.cache.ledger import Ledger

    ledger = Ledger(Path(sys.argv[1]), Clock())
    n = 0
    while True:
        # Two rows that belong together: a tag and its digest's membership.
        ledger.write([
            ("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?, ?, ?)",
             ("up", "repo", f"t{n}", "a", f"sha256:{n:064x}", "m", float(n))),
            ("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
             ("up", "repo", f"sha256:{n:064x}", float(n))),
        ])
        n += 1
        if n % 2000 == 0:
            ledger.sync()
            print(n, flush=True)
    """
)


def test_kill_9_mid_write_leaves_a_consistent_database(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as writer:
        try:
            assert writer.stdout is not None
            synced = 0
            while synced < 6000:  # committed for sure; more are being written
                line = writer.stdout.readline()
                assert line, "the writer died"
                synced = int(line)
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(30)
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tags = {int(t[1:]) for (t,) in db.execute("SELECT tag FROM tags")}
        members = {int(d[7:], 16) for (d,) in db.execute("SELECT digest FROM members")}
    assert len(tags) >= synced
    # Every change whole or not at all, and in the order written.
    assert tags == members
    assert tags == set(range(len(tags)))
    # And it opens, loads and goes on.
    ledger = open_ledger(tmp_path)
    assert len(ledger.tags) == len(tags)
    ledger.close()


# --- bounds -------------------------------------------------------------------


def test_each_table_keeps_at_most_max_rows_newest_first(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, max_rows=10)
    for n in range(25):
        ledger.grants.put(("up", "repo", f"sha256:{n}", "who"), (), 1000.0 + n)
    assert len(ledger.grants) == 10
    ledger.close()
    kept = rows(tmp_path, "SELECT digest FROM grants ORDER BY stamp")
    assert kept == [(f"sha256:{n}",) for n in range(15, 25)]

    smaller = open_ledger(tmp_path, max_rows=4)  # the cap was lowered
    assert [k[2] for k in smaller.grants.rows] == [f"sha256:{n}" for n in range(21, 25)]
    smaller.close()
    assert len(rows(tmp_path, "SELECT * FROM grants")) == 4


def test_rows_older_than_max_age_are_pruned(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, now=1000.0, max_age=100.0)
    for n in range(10):
        ledger.public.put(("up", f"repo{n}"), (), 890.0 + n * 10)  # 890 ... 980
    ledger.challenges.put(("up", "url"), ("https://auth", "svc"), 0.0)
    ledger.prune()  # before 900
    assert [k[1] for k in ledger.public.rows] == [f"repo{n}" for n in range(1, 10)]
    ledger.close()
    assert len(rows(tmp_path, "SELECT * FROM public")) == 9

    later = open_ledger(tmp_path, now=1050.0, max_age=100.0)  # before 950
    assert [k[1] for k in later.public.rows] == [f"repo{n}" for n in range(6, 10)]
    # The last challenge of an upstream is never too old to answer a ping.
    assert later.challenges.get(("up", "url")) == (("https://auth", "svc"), 0.0)
    later.close()


def test_a_changed_row_is_one_row_and_survives_a_restart(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    key = ("up", "library/web", "1", "application/json")
    ledger.tags.put(key, ("sha256:a", "m"), 1.0)
    ledger.tags.put(key, ("sha256:b", "m"), 2.0)
    ledger.close()
    assert rows(tmp_path, "SELECT digest, stamp FROM tags") == [("sha256:b", 2.0)]
    again = open_ledger(tmp_path)
    assert again.tags.get(key) == (("sha256:b", "m"), 2.0)
    again.close()


def test_journal_is_wal(tmp_path: Path) -> None:
    open_ledger(tmp_path).close()
    assert rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]


# --- no secret kept -----------------------------------------------------------


def test_the_secret_is_0600_stable_and_per_directory(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    a, b = open_ledger(one), open_ledger(two)
    assert (one / "secret").stat().st_mode & 0o777 == 0o600
    assert a.keys.of("x", b"cred") != b.keys.of("x", b"cred")
    first = a.keys.of("x", b"cred")
    a.close()
    b.close()
    again = open_ledger(one)
    assert again.keys.of("x", b"cred") == first
    again.close()


def _request(authorization: bytes | None, own: bytes | None = None) -> Request:
    request = DummyRequest([b""])
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    request.own_token = own  # type: ignore[attr-defined]
    return cast(Request, request)


def test_a_principal_survives_new_tokens_and_restarts(tmp_path: Path) -> None:
    alice = b"Basic " + base64.b64encode(b"alice:secret")
    ledger = open_ledger(tmp_path)
    book = TokenBook(ledger)
    evidence = Evidence(ledger, book, ledger.clock, ttl=10.0)
    principal = book.principal(alice, [])
    assert principal is not None
    assert principal == book.principal(b"basic  " + alice.split()[1], [])
    assert principal == book.principal(
        None,
        [("grant_type", "password"), ("username", "alice"), ("password", "secret")],
    )
    book.issued("upstream-token-1", principal, 300)
    who = evidence.who(_request(b"Bearer upstream-token-1"))
    evidence.granted("up", "private/vault", "sha256:v", who)
    ledger.close()

    ledger = open_ledger(tmp_path, now=5000.0)  # later, and restarted
    book = TokenBook(ledger)
    evidence = Evidence(ledger, book, ledger.clock, ttl=10.0)
    offline = book.offline_token(book.principal(alice, []))
    alice_now = evidence.who(_request(None, b"Bearer " + offline.encode()))
    assert evidence.remembered("up", "private/vault", "sha256:v", alice_now)
    assert not evidence.fresh("up", "private/vault", "sha256:v", alice_now)
    # The very token that was allowed still is (while nobody can ask).
    same = evidence.who(_request(b"Bearer upstream-token-1"))
    assert evidence.remembered("up", "private/vault", "sha256:v", same)
    others = [
        evidence.who(_request(None)),
        evidence.who(_request(None, b"Bearer " + book.offline_token(None).encode())),
        evidence.who(
            _request(None, b"Bearer " + offline[:-4].encode() + b"0000")  # forged
        ),
        evidence.who(
            _request(
                None,
                b"Bearer "
                + book.offline_token(
                    book.principal(b"Basic " + base64.b64encode(b"alice:guess"), [])
                ).encode(),
            )
        ),
    ]
    for who in others:
        assert not evidence.remembered("up", "private/vault", "sha256:v", who)
    ledger.close()


@pytest.mark.parametrize("when", ["between writes", "in the middle of a write"])
def test_a_ledger_removed_under_docxy_is_recreated_with_what_came_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """An operator wipes the cache directory under Docxy. In the middle of a
    write SQLite answers "disk I/O error": that batch too lands in a new
    file, and the cache's disk health is not told (it would step the whole
    cache aside)."""
    from docxy.cache.ledger_db import connect as real_connect

    root = tmp_path / "cache"
    root.mkdir()
    ledger = open_ledger(root)
    errors: list[OSError] = []
    ledger.on_error(errors.append)
    ledger.public.put(("up", "a"), (), 1.0)
    ledger.sync()
    wiped: list[bool] = []

    def wiped_mid_write(path: Path) -> sqlite3.Connection:
        if not wiped:
            wiped.append(True)
            shutil.rmtree(root)
            raise sqlite3.OperationalError("disk I/O error")
        return real_connect(path)

    if when == "between writes":
        shutil.rmtree(root)
    else:
        monkeypatch.setattr("docxy.cache.ledger.connect", wiped_mid_write)
    ledger.public.put(("up", "b"), (), 2.0)
    ledger.close()
    assert errors == []
    assert wiped == ([True] if when != "between writes" else [])
    assert rows(root, "SELECT repo FROM public ORDER BY stamp") == [("b",)]


def test_changes_the_disk_refused_are_written_once_it_takes_them(
    tmp_path: Path,
) -> None:
    ledger = open_ledger(tmp_path)
    ledger.public.put(("up", "a"), (), 1.0)
    ledger.sync()
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute("BEGIN EXCLUSIVE")  # another writer holds it: writes fail
        ledger.public.put(("up", "b"), (), 2.0)
        ledger.public.put(("up", "c"), (), 3.0)
        ledger.sync()
        db.execute("ROLLBACK")
    ledger.public.put(("up", "d"), (), 4.0)
    ledger.close()
    assert rows(tmp_path, "SELECT repo FROM public ORDER BY stamp") == [
        ("a",),
        ("b",),
        ("c",),
        ("d",),
    ]


def test_an_offline_token_with_non_ascii_bytes_names_nobody(tmp_path: Path) -> None:
    # Header bytes are latin-1 text here: a MAC of any byte must be compared
    # (and refused), never raise (a 500 for every request carrying it).
    ledger = open_ledger(tmp_path)
    book = TokenBook(ledger)
    evidence = Evidence(ledger, book, ledger.clock, ttl=10.0)
    for token in (b"docxy-offline.\xe9.\xe9", b"docxy-offline.p.\xff" * 3):
        who = evidence.who(_request(None, b"Bearer " + token))
        assert who.keys == ("-",)
    ledger.close()


def test_workers_starting_together_share_one_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that found the secret half made would hash with a random
    # one of its own: what it notes nobody else could ever match.
    make = os.urandom
    others: list[Keys] = []

    def racing(n: int) -> bytes:
        if not others:
            others.append(Keys(b""))  # once
            others[0] = Keys.in_directory(tmp_path)  # the other worker
        return make(n)

    monkeypatch.setattr(os, "urandom", racing)
    mine = Keys.in_directory(tmp_path)
    assert mine.of("x", b"y") == others[0].of("x", b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_an_offline_token_expires(tmp_path: Path) -> None:
    # It stands for a credential: like the upstream tokens it stands in
    # for, it must not open the credential's cached content for good.
    from docxy.cache.offline import OFFLINE_TOKEN_LIFETIME

    ledger = open_ledger(tmp_path)
    book = TokenBook(ledger)
    evidence = Evidence(ledger, book, ledger.clock, ttl=10.0)
    principal = book.principal(b"Basic " + base64.b64encode(b"alice:secret"), [])
    assert principal is not None
    token = b"Bearer " + book.offline_token(principal).encode()
    assert evidence.who(_request(None, token)).keys == ("-", principal)
    cast(Clock, ledger.clock).advance(OFFLINE_TOKEN_LIFETIME + 1)
    assert evidence.who(_request(None, token)).keys == ("-",)
    ledger.close()


# --- workers opening one ledger at once -----------------------------------------


def test_a_worker_losing_the_wal_switch_of_a_new_ledger_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: list[str]
) -> None:
    # Two workers starting together on a new cache both switch the new file
    # to WAL. The first holds its write lock for the switch; the second,
    # upgrading its read lock to write, is told "database is locked" at
    # once (SQLite does not wait there: waiting could deadlock). It used to
    # start with no evidence and write nothing until a later batch.
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other worker, mid-switch
    pauses: list[float] = []

    def other_done(seconds: float) -> None:
        pauses.append(seconds)
        if other.in_transaction:
            other.execute("ROLLBACK")

    monkeypatch.setattr(ledger_db, "_pause", other_done)
    try:
        ledger = open_ledger(tmp_path)
        ledger.public.put(("up", "a"), (), 1000.0)
        ledger.close()
    finally:
        other.close()
    assert warnings == []
    assert pauses != []  # it did lose the race once
    assert rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(tmp_path, "SELECT repo FROM public") == [("a",)]


def test_a_worker_starting_while_another_writes_reads_every_row(
    tmp_path: Path, warnings: list[str]
) -> None:
    # A worker restarted while the other one is mid-write (or stopped
    # there, SIGSTOP): reading never waits for the writer. Its start used
    # to delete aged rows itself, waited for the lock, and gave up: it
    # knew no public repository, grant or tag while the upstream was down.
    ledger = open_ledger(tmp_path, now=1000.0, max_age=100.0)
    ledger.public.put(("up", "old"), (), 850.0)
    ledger.public.put(("up", "a"), (), 950.0)
    ledger.tags.put(("up", "a", "1", "x"), ("sha256:" + "0" * 64, "m"), 960.0)
    ledger.close()
    with contextlib.closing(
        sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    ) as other:
        other.execute("BEGIN IMMEDIATE")  # the other worker's write
        ledger = open_ledger(tmp_path, now=1000.0, max_age=100.0)
        assert list(ledger.public.rows) == [("up", "a")]
        assert len(ledger.tags) == 1
        assert not [w for w in warnings if "cannot read" in w]
        other.execute("ROLLBACK")
    ledger.public.put(("up", "b"), (), 990.0)
    ledger.close()  # the aged row goes from the disk too, once it can
    assert rows(tmp_path, "SELECT repo FROM public ORDER BY stamp") == [
        ("a",),
        ("b",),
    ]
