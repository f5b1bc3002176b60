"""The shared registry vocabulary: digests and token scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.oci import Digest, Scope, b64url, map_scopes
from tests.support.digests import sha256_digest

BODY = b"some exact bytes"
SHA256 = sha256_digest(BODY)


def test_digest_parses_validates_and_lays_out() -> None:
    digest = Digest.parse(SHA256)
    assert digest.algorithm == "sha256"
    assert str(digest) == SHA256
    assert digest.path(Path("/r")) == Path("/r/sha256", digest.hex[:2], digest.hex)
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nocolon"):
        with pytest.raises(ValueError):
            Digest.parse(bad)


def test_digest_hasher_checks_bytes_incrementally() -> None:
    digest = Digest.parse(SHA256)
    hasher = digest.hasher()
    hasher.update(BODY[:4])
    assert not hasher.matches()
    hasher.update(BODY[4:])
    assert hasher.matches()
    assert digest.matches(BODY)
    assert not digest.matches(BODY + b"!")


def test_digest_matches_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(BODY)
    assert Digest.parse(SHA256).matches_file(path)
    path.write_bytes(BODY[:-1])
    assert not Digest.parse(SHA256).matches_file(path)


def test_scope_parse_and_rename() -> None:
    scope = Scope.parse("repository:owner/img:pull,push")
    assert (scope.kind, scope.name, scope.actions) == (
        "repository",
        "owner/img",
        "pull,push",
    )
    assert scope.repository
    assert scope.renamed("library/img") == "repository:library/img:pull,push"
    assert not Scope.parse("registry:catalog:*").repository
    assert Scope.parse("repository:nocolon").name == ""


def test_map_scopes_keeps_order_and_spacing() -> None:
    assert map_scopes("a b  c", str.upper) == "A B  C"


def test_b64url_is_unpadded() -> None:
    assert b64url(b"\xff\xfe") == "__4"
