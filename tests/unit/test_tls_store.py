"""The state directory: private files, atomic replacement, reuse.

Why: it holds the account key and certificate keys; a partial write or a
world-readable key would be worse than no certificate at all.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from docxy.tls.certs import (
    ACME_IDENTIFIER,
    KeyAndChain,
    alpn_challenge,
    dns_names,
    placeholder,
)
from docxy.tls.store import AcmeStore, atomic_write

CA = "https://acme.example:14000/dir"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directory_and_account_key_are_private_and_reused(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path / "acme", CA)
    store.prepare()
    assert mode(store.path) == 0o700
    assert mode(store.certs) == 0o700
    key = store.account_key()
    assert mode(store.path / "account.key") == 0o600
    assert (
        AcmeStore(store.path, CA).account_key().private_numbers()
        == key.private_numbers()
    )


def test_prepare_tightens_an_open_directory(tmp_path: Path) -> None:
    d = tmp_path / "acme"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    AcmeStore(d, CA).prepare()
    assert mode(d) == 0o700


def test_certificates_are_kept_per_ca() -> None:
    from docxy.tls.spec import LETSENCRYPT, LETSENCRYPT_STAGING
    from docxy.tls.store import ca_dirname

    assert ca_dirname(LETSENCRYPT) == "acme-v02.api.letsencrypt.org_directory"
    assert ca_dirname(LETSENCRYPT_STAGING) != ca_dirname(LETSENCRYPT)
    assert ca_dirname(CA) == "acme.example_14000_dir"
    assert ca_dirname("https://../..") == "ca"


def test_certificate_round_trip_is_private(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path, CA)
    store.prepare()
    pair = placeholder(["a.example", "b.example"])
    store.save("a.example", pair)
    assert mode(store.cert_path("a.example")) == 0o600
    loaded = store.load("a.example")
    assert loaded is not None
    assert loaded.serial == pair.serial
    assert loaded.key.private_numbers() == pair.key.private_numbers()
    assert store.load("missing.example") is None


def test_unusable_files_are_ignored_not_fatal(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path, CA)
    store.prepare()
    store.cert_path("a.example").write_text("garbage")
    assert store.load("a.example") is None
    # A certificate that does not name the host is not served for it.
    store.save("b.example", placeholder(["other.example"]))
    assert store.load("b.example") is None
    # A key that does not match the certificate.
    one, two = placeholder(["c.example"]), placeholder(["c.example"])
    store.save("c.example", KeyAndChain(one.key, two.chain))
    assert store.load("c.example") is None


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert os.listdir(tmp_path) == ["f.pem"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.pem"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.pem"]


def test_alpn_challenge_certificate_shape() -> None:
    """RFC 8737: SAN is the name, acmeIdentifier is critical and holds the
    DER OCTET STRING of sha256(key authorization)."""
    import hashlib

    pair = alpn_challenge("mirror.example", "token.thumb")
    assert dns_names(pair.leaf) == ["mirror.example"]
    ext = pair.leaf.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
