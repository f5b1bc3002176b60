"""Accounts and access against the real registry and token service, with real
clients: the mirror's upstream account, Docxy's own accounts, allow-lists."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.conftest import DocxyFactory
from tests.support.registry import Upstream
from tests.support.skopeo import skopeo_pull

PRIVATE = "private/secret:1"


def password_file(tmp_path: Path, secret: str = "secret") -> Path:
    path = tmp_path / "upstream-password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_anonymous_clients_pull_private_images_of_the_mirrors_account(
    upstream: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    docxy = docxy_factory(
        upstream.url,
        "--upstream-username",
        "alice",
        "--upstream-password-file",
        str(password_file(tmp_path)),
    )
    before = len(upstream.token_requests())
    for attempt in range(2):
        skopeo_pull(docxy.hostport, PRIVATE, tmp_path / f"pull-{attempt}" / "out")
    asked = upstream.token_requests()[before:]
    assert asked, "Docxy asked the token service"
    assert {entry["user"] for entry in asked} == {"alice"}
    # One token per scope, shared by both pulls (the second costs no round trip).
    scopes = [tuple(v for k, v in entry["params"] if k == "scope") for entry in asked]
    assert len(scopes) == len(set(scopes)), asked
    log = docxy.log_text()
    assert base64.b64encode(b"alice:secret").decode() not in log
    assert "account alice" in log
