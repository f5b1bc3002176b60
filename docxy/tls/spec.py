"""The ``acme:`` endpoint string: what it means, checked without side effects.

Docxy's config parses every ``--port`` at start only to reject typos, and
twistd parses it again to listen, so parsing must not touch the disk beyond
reading, the network, or the reactor. Everything an operator can get wrong
is reported here in one line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DIRECTORIES = {"letsencrypt": LETSENCRYPT, "letsencrypt-staging": LETSENCRYPT_STAGING}
CHALLENGES = ("tls-alpn-01", "http-01")
DEFAULT_RETRY = 60.0

USAGE = (
    "acme:STATE_DIR:ENDPOINT:domains=NAME[,NAME...][:email=ADDR]"
    "[:directory=URL|letsencrypt|letsencrypt-staging][:caBundle=PEM]"
    "[:challenge=tls-alpn-01|http-01][:retry=SECONDS]"
)
OPTIONS = frozenset({"domains", "email", "directory", "caBundle", "challenge", "retry"})
# Sub-endpoints that already do TLS (or are this one): wrapping them is a mistake.
_TLS_KINDS = frozenset({"ssl", "tls", "acme", "le", "lets", "txsni"})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AcmeSpecError(ValueError):
    """A bad ``acme:`` string; the message is one line."""


@dataclass(frozen=True)
class AcmeSpec:
    """What one ``acme:`` port string asks for, parsed without side effects."""

    state_dir: Path
    domains: tuple[str, ...]
    directory: str = LETSENCRYPT
    email: str | None = None
    ca_bundle: Path | None = None
    challenge: str = "tls-alpn-01"
    retry: float = DEFAULT_RETRY


def escape(value: str) -> str:
    """Quote a value for an endpoint string (``\\``, ``:`` and ``=``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def parse_acme(args: Sequence[str], kwargs: Mapping[str, str]) -> tuple[AcmeSpec, str]:
    """Split ``acme:`` arguments into the spec and the wrapped endpoint string."""
    if not args or not args[0]:
        raise AcmeSpecError(f"needs a state directory: {USAGE}")
    if len(args) < 2:
        raise AcmeSpecError(
            f"needs an endpoint to listen on after the state directory "
            f"(e.g. tcp:443): {USAGE}"
        )
    kind = args[1]
    if kind in _TLS_KINDS:
        raise AcmeSpecError(
            f"wraps a plain endpoint such as tcp:443, not {kind!r} "
            "(acme: adds TLS itself)"
        )
    sub_kwargs = {k: v for k, v in kwargs.items() if k not in OPTIONS}
    sub = ":".join(
        [
            *(escape(a) for a in args[1:]),
            *(f"{k}={escape(v)}" for k, v in sub_kwargs.items()),
        ]
    )
    if "domains" not in kwargs:
        raise AcmeSpecError(f"domains= is required: {USAGE}")
    spec = AcmeSpec(
        state_dir=_state_dir(args[0]),
        domains=parse_domains(kwargs["domains"]),
        directory=_directory(kwargs.get("directory", "letsencrypt")),
        email=_email(kwargs["email"]) if "email" in kwargs else None,
        ca_bundle=_ca_bundle(kwargs["caBundle"]) if "caBundle" in kwargs else None,
        challenge=_challenge(kwargs.get("challenge", "tls-alpn-01")),
        retry=_retry(kwargs.get("retry", str(DEFAULT_RETRY))),
    )
    return spec, sub


def parse_domains(value: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in value.split(","):
        name = raw.strip().lower().rstrip(".")
        if not name:
            raise AcmeSpecError(f"domains: empty name in {value!r}")
        _check_domain(name)
        if name not in names:
            names.append(name)
    return tuple(names)


def _check_domain(name: str) -> None:
    if name.startswith("*."):
        raise AcmeSpecError(
            f"domains: {name!r}: wildcard names need DNS-01, which Docxy does not do"
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise AcmeSpecError(f"domains: {name!r}: IP addresses are not supported")
    if not name.isascii():
        raise AcmeSpecError(
            f"domains: {name!r}: write internationalised names in punycode (xn--...)"
        )
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise AcmeSpecError(f"domains: {name!r} is not a valid DNS name")


def _state_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise AcmeSpecError(f"state directory {value!r} must be an absolute path")
    if path.exists() and not path.is_dir():
        raise AcmeSpecError(f"state directory {value!r} is not a directory")
    if not path.exists() and not path.parent.is_dir():
        raise AcmeSpecError(
            f"state directory {value!r}: its parent {str(path.parent)!r} does not exist"
        )
    return path


def _directory(value: str) -> str:
    url = DIRECTORIES.get(value, value)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise AcmeSpecError(
            f"directory: {value!r} must be an https:// URL or one of "
            f"{', '.join(DIRECTORIES)} (escape its colons as \\:)"
        )
    return url


def _email(value: str) -> str:
    if not re.fullmatch(r"[^@\s,:]+@[^@\s,:]+", value):
        raise AcmeSpecError(f"email: {value!r} is not an email address")
    return value


def _ca_bundle(value: str) -> Path:
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AcmeSpecError(f"caBundle: cannot read {value!r}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise AcmeSpecError(f"caBundle: {value!r} holds no PEM certificate")
    return path


def _challenge(value: str) -> str:
    if value not in CHALLENGES:
        raise AcmeSpecError(
            f"challenge: expected {' or '.join(CHALLENGES)}, got {value!r}"
        )
    return value


def _retry(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise AcmeSpecError(f"retry: expected seconds, got {value!r}") from None
    if not 0 < seconds <= 86400:
        raise AcmeSpecError(
            f"retry: must be between 0 and 86400 seconds, got {value!r}"
        )
    return seconds
