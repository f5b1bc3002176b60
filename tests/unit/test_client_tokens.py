"""Docxy's own tokens: signed, bound to repositories, expiring (task.Clock)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from docxy.client_tokens import TokenSigner, is_client_token, load_or_create_key

KEY = b"k" * 32


def test_a_token_opens_only_the_repositories_it_was_granted_for() -> None:
    signer = TokenSigner(KEY, Clock(), 300)
    grant = signer.verify(signer.issue("alice", {("docker.io", "app")}))
    assert grant is not None and grant.subject == "alice"
    assert grant.covers("docker.io", "app")
    assert not grant.covers("docker.io", "other")
    assert not grant.covers("ghcr.io", "app")


def test_an_expired_token_is_refused() -> None:
    clock = Clock()
    signer = TokenSigner(KEY, clock, 300)
    token = signer.issue("alice", {("docker.io", "app")})
    clock.advance(299)
    assert signer.verify(token) is not None
    clock.advance(1)
    assert signer.verify(token) is None


def test_forged_or_damaged_tokens_are_refused() -> None:
    signer = TokenSigner(KEY, Clock(), 300)
    token = signer.issue("alice", {("docker.io", "app")})
    prefix, body, signature = token.split(".")
    other = TokenSigner(b"x" * 32, Clock(), 300).issue("alice", {("docker.io", "*")})
    assert signer.verify(other) is None  # another key
    # The same signature over a body that grants more.
    forged_body = TokenSigner(KEY, Clock(), 9999).issue("alice", set()).split(".")[1]
    assert signer.verify(f"{prefix}.{forged_body}.{signature}") is None
    assert signer.verify(f"{prefix}.{body}.") is None
    assert signer.verify(f"{prefix}.{body}") is None
    assert signer.verify("garbage") is None
    assert is_client_token(f"Bearer {token}".encode())
    assert not is_client_token(b"Basic dXNlcjpwdw==")


def test_replicas_with_one_key_file_accept_each_others_tokens(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    first = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_key(path)
    assert first == second and len(first) == 32
    clock = Clock()
    token = TokenSigner(first, clock, 60).issue("alice", {("docker.io", "app")})
    assert TokenSigner(second, clock, 60).verify(token) is not None


def test_a_key_file_others_can_read_is_made_0600(tmp_path: Path) -> None:
    # Whoever reads the key can sign tokens for any repository.
    path = tmp_path / "token.key"
    path.write_text("ab" * 32 + "\n")
    path.chmod(0o644)
    assert load_or_create_key(path) == bytes.fromhex("ab" * 32)
    assert path.stat().st_mode & 0o777 == 0o600


def test_workers_starting_together_share_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --workers: another process looks for the key while this one makes
    # it. It must never find a half-made file (a worker failing to start,
    # or signing with a key of its own).
    path = tmp_path / "token.key"
    make = secrets.token_bytes
    others: list[bytes] = []

    def racing(n: int) -> bytes:
        if not others:
            others.append(b"")  # once
            others[0] = load_or_create_key(path)  # the other worker, meanwhile
        return make(n)

    monkeypatch.setattr(secrets, "token_bytes", racing)
    assert load_or_create_key(path) == others[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token.key"]
