"""The htpasswd accounts: an unknown user costs what a known one does."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import defer

from docxy.errors import RegistryError
from docxy.htpasswd import MAX_PENDING_CHECKS, Accounts


def test_an_unknown_user_is_checked_at_the_cost_of_the_file(tmp_path: Path) -> None:
    # htpasswd -B hashes at cost 5 unless told otherwise: a dummy hash of a
    # fixed, higher cost would make an unknown user much slower to refuse
    # than a known user's wrong password, telling which users exist.
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4))
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + hashed + b"\n")
    accounts = Accounts.load(path)
    assert accounts.dummy_cost == 4
    assert accounts.check_now("alice", "secret")
    assert not accounts.check_now("alice", "wrong")
    assert not accounts.check_now("mallory", "secret")


@pytest_twisted.ensureDeferred
async def test_logins_beyond_the_queue_are_refused_at_once(tmp_path: Path) -> None:
    # Each check is a bcrypt hash in the reactor's thread pool (which also
    # resolves upstream host names): a flood of logins must not queue
    # without bound.
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4))
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + hashed + b"\n")
    accounts = Accounts.load(path)
    running = [
        defer.ensureDeferred(accounts.check("alice", "wrong"))
        for _ in range(MAX_PENDING_CHECKS)
    ]
    with pytest.raises(RegistryError) as refused:
        await accounts.check("alice", "secret")
    assert (refused.value.status, refused.value.code) == (503, "UNAVAILABLE")
    assert await defer.gatherResults(running) == [False] * MAX_PENDING_CHECKS
    assert await accounts.check("alice", "secret")
