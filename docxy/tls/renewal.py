"""When to renew and when to retry: pure functions, so they can be tested.

ACME Renewal Information (ARI, RFC 9773) lets the CA say when to renew
(earlier when it must revoke); without it the rule of thumb is two thirds
of the lifetime, which for Let's Encrypt's 90 days leaves a month of
retries before expiry.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from cryptography import x509

from ..oci import b64url

# Re-check at least this often, so ARI changes and clock jumps are noticed.
CHECK_INTERVAL = 6 * 3600.0
MAX_RETRY = 3600.0


def lifetime_renewal(cert: x509.Certificate) -> datetime.datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * 2 / 3


@dataclass(frozen=True)
class Window:
    """A suggested renewal window from ARI."""

    start: datetime.datetime
    end: datetime.datetime

    def pick(self, rng: random.Random) -> datetime.datetime:
        """A uniformly random moment in the window, as RFC 9773 asks."""
        span = max((self.end - self.start).total_seconds(), 0.0)
        return self.start + datetime.timedelta(seconds=rng.uniform(0, span))


def parse_window(doc: object) -> Window:
    """``{"suggestedWindow": {"start": ..., "end": ...}}`` -> Window."""
    if not isinstance(doc, dict) or not isinstance(doc.get("suggestedWindow"), dict):
        raise ValueError("renewalInfo without suggestedWindow")
    raw = doc["suggestedWindow"]
    start = _rfc3339(raw.get("start"))
    end = _rfc3339(raw.get("end"))
    if end < start:
        raise ValueError("renewalInfo window ends before it starts")
    return Window(start, end)


def _rfc3339(value: object) -> datetime.datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # fromisoformat accepts at most microseconds; CAs may send nanoseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {value!r}")
    return parsed.astimezone(datetime.UTC)


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 CertID: base64url(AKI keyIdentifier) "." base64url(serial DER)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    key_id = aki.value.key_identifier
    if key_id is None:
        raise ValueError("certificate has no authority key identifier")
    serial = cert.serial_number
    length = serial.bit_length() // 8 + 1  # DER INTEGER: leading 0 when high bit set
    return f"{b64url(key_id)}.{b64url(serial.to_bytes(length, 'big'))}"


def next_check(
    due: datetime.datetime, now: datetime.datetime, interval: float = CHECK_INTERVAL
) -> float:
    """Seconds to sleep before looking again (0: renew now)."""
    return max(0.0, min((due - now).total_seconds(), interval))


def retry_delay(
    failures: int, first: float, hint: float | None = None, cap: float = MAX_RETRY
) -> float:
    """Exponential backoff from ``first``, capped; a server's Retry-After wins
    when it asks for longer."""
    delay = min(first * 2.0 ** max(failures - 1, 0), max(cap, first))
    if hint is not None and hint > delay:
        delay = hint
    return delay
