"""The htpasswd accounts: an unknown user costs what a known one does."""

from __future__ import annotations

from pathlib import Path

import bcrypt

from docxy.htpasswd import Accounts


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
