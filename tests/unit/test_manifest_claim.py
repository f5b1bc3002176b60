"""ManifestClaims on a real directory and real flocks, on a fake clock.

"Another worker" is a second claim on the same file taken by the test
(flock locks conflict between open files, within one process too).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock

from docxy.cache.fill_lock import FillClaim
from docxy.cache.manifest_claim import ManifestClaims
from tests.support.memory import result

DIGEST = "sha256:" + "ab" * 32


class Calls:
    """What ``get_once`` asked: GETs made, stores looked at, waits told."""

    def __init__(self, stored: bytes | None = None) -> None:
        self.stored = stored
        self.gets = 0
        self.looks = 0
        self.waits = 0

    async def get(self) -> bytes:
        self.gets += 1
        return b"fetched"

    async def landed(self) -> bytes | None:
        self.looks += 1
        return self.stored

    def waited(self) -> None:
        self.waits += 1


def another_worker_gets(claims: ManifestClaims) -> FillClaim:
    """The claim another worker would hold while its GET runs."""
    claim = FillClaim.take(claims.path(DIGEST))
    assert isinstance(claim, FillClaim)
    return claim


def run(claims: ManifestClaims, calls: Calls) -> defer.Deferred[bytes]:
    return defer.Deferred.fromCoroutine(
        claims.get_once(DIGEST, calls.get, calls.landed, calls.waited)
    )


def test_the_first_worker_gets_under_the_claim_and_lets_it_go(tmp_path: Path) -> None:
    claims = ManifestClaims(tmp_path, Clock())
    calls = Calls()
    assert result(run(claims, calls)) == b"fetched"
    assert (calls.gets, calls.looks, calls.waits) == (1, 0, 0)
    assert list(tmp_path.iterdir()) == []  # released: the file is gone


def test_a_worker_waits_for_the_others_get_and_takes_what_it_stored(
    tmp_path: Path,
) -> None:
    clock = Clock()
    claims = ManifestClaims(tmp_path, clock, poll=0.5, stall=30)
    other = another_worker_gets(claims)
    calls = Calls()
    d = run(claims, calls)
    clock.advance(5)
    assert not d.called and calls.waits == 1 and calls.gets == 0
    calls.stored = b"stored by the other"
    other.release()
    clock.advance(0.5)
    assert result(d) == b"stored by the other"
    assert (calls.gets, calls.looks, calls.waits) == (0, 1, 1)


def test_if_the_others_get_stored_nothing_this_worker_claims_and_gets(
    tmp_path: Path,
) -> None:
    clock = Clock()
    claims = ManifestClaims(tmp_path, clock, poll=0.5)
    other = another_worker_gets(claims)
    calls = Calls()
    d = run(claims, calls)
    other.release()  # its GET failed, or its client was refused
    clock.advance(0.5)
    assert result(d) == b"fetched"
    assert (calls.gets, calls.looks, calls.waits) == (1, 1, 1)
    assert list(tmp_path.iterdir()) == []


def test_a_stuck_holder_is_waited_for_stall_seconds_only(tmp_path: Path) -> None:
    clock = Clock()
    claims = ManifestClaims(tmp_path, clock, poll=1, stall=10)
    other = another_worker_gets(claims)
    calls = Calls()
    d = run(claims, calls)
    clock.pump([1] * 9)
    assert not d.called
    clock.pump([1] * 2)
    assert result(d) == b"fetched"
    assert (calls.gets, calls.looks) == (1, 1)
    other.release()
