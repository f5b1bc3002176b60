"""Keys, CSRs and the certificates Docxy makes itself (placeholder, TLS-ALPN-01).

ECDSA P-256 throughout: generating a key takes a millisecond (RSA takes
~100 ms on the reactor thread), and every client Docxy serves accepts it.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

PrivateKey = ec.EllipticCurvePrivateKey
# RFC 8737: the acmeIdentifier extension of a TLS-ALPN-01 certificate.
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


@dataclass(frozen=True)
class KeyAndChain:
    """A private key and its certificate chain, leaf first."""

    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def covers(self, name: str) -> bool:
        return name in dns_names(self.leaf)

    def expired(self, now: datetime.datetime) -> bool:
        return now >= self.leaf.not_valid_after_utc

    def to_pem(self) -> bytes:
        """One file, key first: renaming it is the only step, so the pair
        on disk can never be a new key with an old certificate."""
        return key_pem(self.key) + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self.chain
        )

    @classmethod
    def from_pem(cls, data: bytes) -> KeyAndChain:
        start = data.find(b"-----BEGIN CERTIFICATE-----")
        if start < 0:
            raise ValueError("no certificate")
        chain = tuple(x509.load_pem_x509_certificates(data[start:]))
        key = load_key(data[:start])
        if key.public_key() != chain[0].public_key():
            raise ValueError("the key does not match the certificate")
        return cls(key, chain)


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]


def make_csr(key: PrivateKey, names: Sequence[str]) -> bytes:
    """DER CSR with every name in the SAN (no CN: RFC 8555 does not need it)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _self_signed(
    key: PrivateKey,
    names: Sequence[str],
    common_name: str,
    lifetime: datetime.timedelta,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def placeholder(names: Sequence[str]) -> KeyAndChain:
    """Served until a real certificate exists: clients fail verification
    (visibly, naming the placeholder) instead of the port being closed."""
    key = new_key()
    cert = _self_signed(
        key, names, "Docxy placeholder (ACME pending)", datetime.timedelta(days=7)
    )
    return KeyAndChain(key, (cert,))


def alpn_challenge(name: str, key_authorization: str) -> KeyAndChain:
    """The RFC 8737 TLS-ALPN-01 certificate: SAN = name, critical
    acmeIdentifier = DER OCTET STRING of sha256(keyAuthorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    der_octet_string = b"\x04\x20" + digest
    key = new_key()
    cert = _self_signed(
        key,
        [name],
        "ACME TLS-ALPN-01 challenge",
        datetime.timedelta(days=1),
        [(x509.UnrecognizedExtension(ACME_IDENTIFIER, der_octet_string), True)],
    )
    return KeyAndChain(key, (cert,))
