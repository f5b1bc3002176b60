"""Renewal timing and retry backoff (pure functions).

Why: renewing too late lets a certificate expire; too early or too often
hits CA rate limits. These rules decide both.
"""

from __future__ import annotations

import datetime
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.tls.renewal import (
    CHECK_INTERVAL,
    Window,
    ari_cert_id,
    lifetime_renewal,
    next_check,
    parse_window,
    retry_delay,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, tzinfo=UTC)


def cert(
    not_before: datetime.datetime,
    days: int,
    serial: int = 0x87654321,
    aki: bytes | None = b"\x01" * 20,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def test_two_thirds_of_lifetime() -> None:
    assert lifetime_renewal(cert(T0, 90)) == T0 + datetime.timedelta(days=60)


def test_next_check_caps_the_sleep_and_never_goes_negative() -> None:
    due = T0 + datetime.timedelta(days=30)
    assert next_check(due, T0) == CHECK_INTERVAL
    assert next_check(due, due - datetime.timedelta(seconds=5)) == 5
    assert next_check(due, due + datetime.timedelta(days=1)) == 0


def test_ari_cert_id_matches_rfc_9773_example() -> None:
    """The worked example of RFC 9773 section 4.1 (serial 0x87654321 needs a
    leading zero byte in DER)."""
    key_id = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert ari_cert_id(cert(T0, 90, 0x87654321, key_id)) == (
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    )


def test_ari_cert_id_needs_an_aki() -> None:
    with pytest.raises(x509.ExtensionNotFound):
        ari_cert_id(cert(T0, 90, aki=None))


def test_parse_window_and_pick_inside_it() -> None:
    window = parse_window(
        {
            "suggestedWindow": {
                "start": "2026-02-01T00:00:00Z",
                "end": "2026-02-03T00:00:00.123456789Z",
            }
        }
    )
    assert window.start == datetime.datetime(2026, 2, 1, tzinfo=UTC)
    rng = random.Random(7)
    picks = [window.pick(rng) for _ in range(50)]
    assert all(window.start <= p <= window.end for p in picks)
    assert len(set(picks)) > 1


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {
            "suggestedWindow": {
                "start": "2026-02-03T00:00:00Z",
                "end": "2026-02-01T00:00:00Z",
            }
        },
        {"suggestedWindow": {"start": "yesterday", "end": "2026-02-01T00:00:00Z"}},
        {
            "suggestedWindow": {
                "start": "2026-02-01T00:00:00",
                "end": "2026-02-01T00:00:00",
            }
        },
    ],
)
def test_bad_windows_are_rejected(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_window(doc)


def test_window_of_zero_width() -> None:
    w = Window(T0, T0)
    assert w.pick(random.Random(1)) == T0


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    assert [retry_delay(n, 60) for n in range(1, 8)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]
    assert retry_delay(1, 60, hint=7200) == 7200
    assert retry_delay(3, 60, hint=5) == 240
    assert retry_delay(50, 1) == 3600


def test_failures_are_described_in_one_line() -> None:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure
    from twisted.web._newclient import ResponseNeverReceived

    from docxy.tls.acme import AcmeServerError
    from docxy.tls.manager import describe

    problem = AcmeServerError(
        429, "urn:ietf:params:acme:error:rateLimited", "too many", 60.0
    )
    assert describe(problem) == "429 rateLimited: too many"
    tls = ResponseNeverReceived([Failure(ValueError("certificate verify failed"))])
    assert describe(tls) == "ResponseNeverReceived: certificate verify failed"
    refused = describe(ConnectionRefusedError())
    assert refused.startswith("ConnectionRefusedError: ")
    assert "\n" not in refused
