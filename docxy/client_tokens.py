"""The tokens Docxy's own realm issues when accounts are on.

Short, signed (HMAC-SHA256), expiring, and bound to the repositories they
were granted for: a token for one repository opens no other. They are
Docxy's alone: checked and removed as a request comes in
(:mod:`docxy.access_control`), never sent upstream, where Docxy uses its
own upstream tokens instead (:mod:`docxy.mirror_tokens`).

The key is a file (``token-key-file``, by default ``token.key`` in the
cache directory), created at first start: replicas given the same file
accept each other's tokens.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.interfaces import IReactorTime

from .oci import b64url, b64url_decode
from .secret_file import keep_private, read_or_create

PREFIX = "dxt1."
KEY_BYTES = 32


def is_client_token(authorization: bytes) -> bool:
    """Whether an ``Authorization`` value carries a token of Docxy's realm."""
    scheme, _, token = authorization.strip().partition(b" ")
    return scheme.lower() == b"bearer" and token.strip().startswith(PREFIX.encode())


@dataclass(frozen=True)
class Grant:
    """Who a valid token is for and which (upstream, repository) it opens."""

    subject: str
    repositories: frozenset[tuple[str, str]]
    expires: float

    def covers(self, upstream: str, name: str) -> bool:
        return (upstream, name) in self.repositories


class TokenSigner:
    """Issues and verifies Docxy's tokens with one key."""

    def __init__(self, key: bytes, clock: IReactorTime, lifetime: float) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError("token key too short")
        self._key = key
        self.clock = clock
        self.lifetime = lifetime

    def issue(self, subject: str, repositories: set[tuple[str, str]]) -> str:
        now = self.clock.seconds()
        claims = {
            "sub": subject,
            "iat": int(now),
            "exp": now + self.lifetime,
            "acc": sorted([list(pair) for pair in repositories]),
        }
        body = b64url(json.dumps(claims, separators=(",", ":")).encode())
        return f"{PREFIX}{body}.{b64url(self._sign(body))}"

    def verify(self, token: str) -> Grant | None:
        """The token's grant, or None: forged, damaged or expired."""
        if not token.startswith(PREFIX):
            return None
        body, _, signature = token[len(PREFIX) :].partition(".")
        try:
            given = b64url_decode(signature)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._sign(body)):
            return None
        try:
            claims = json.loads(b64url_decode(body))
            grant = Grant(
                str(claims["sub"]),
                frozenset((str(u), str(n)) for u, n in claims["acc"]),
                float(claims["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if grant.expires <= self.clock.seconds():
            return None
        return grant

    def _sign(self, body: str) -> bytes:
        message = (PREFIX + body).encode("ascii", "replace")
        return hmac.new(self._key, message, hashlib.sha256).digest()


def load_or_create_key(path: Path) -> bytes:
    """The signing key in ``path`` (hex), created (mode 0600) if missing."""
    text = read_or_create(
        path, lambda: (secrets.token_bytes(KEY_BYTES).hex() + "\n").encode("ascii")
    )
    key = parse_key(path, text)
    keep_private(path, "anyone who reads it can sign tokens")
    return key


def parse_key(path: Path, text: bytes) -> bytes:
    """The key a token key file holds; ValueError if it holds none."""
    key = bytes.fromhex(text.decode("ascii").strip())
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: fewer than {KEY_BYTES} bytes of hex")
    return key
