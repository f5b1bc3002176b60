"""Self-signed server certificates of a chosen lifetime, for TLS ports."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from docxy.tls.certs import KeyAndChain, key_pem, new_key


def self_signed(name: str, valid_from: float, valid_until: float) -> KeyAndChain:
    """A key and a certificate for ``name``, valid between the two days
    counted from now (negative: in the past)."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_from))
        .not_valid_after(now + datetime.timedelta(days=valid_until))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndChain(key, (cert,))


def write_pair(
    directory: Path, name: str, valid_until: float = 90.5, valid_from: float = -1
) -> tuple[Path, Path]:
    """``name``.key and ``name``.crt in ``directory``: (key, certificate)."""
    pair = self_signed(name, valid_from, valid_until)
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    key.write_bytes(key_pem(pair.key))
    cert.write_bytes(pair.leaf.public_bytes(serialization.Encoding.PEM))
    return key, cert


def ssl_port(key: Path, cert: Path, port: int = 0) -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
