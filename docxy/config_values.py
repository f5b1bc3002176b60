"""How each kind of setting value is read and checked, with one-line errors.

Every parser takes the setting's name (for the message) and the raw value
(a TOML value or a command-line string) and returns the typed value or
raises :class:`ConfigError`; :mod:`docxy.config` maps settings to them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cache.directory import CacheDirError, check_usable


class ConfigError(Exception):
    """Bad configuration; the message is one line naming the setting."""


def http_url(name: str, value: object, *, allow_path: bool) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a URL string, got {value!r}")
    parts = urlsplit(value.strip())
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:  # a password or token: never in an error message
        value = value.replace(f"{userinfo}@", "***@", 1)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{name}: {value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ConfigError(f"{name}: {value!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name}: {value!r} must not contain credentials")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}: {value!r} must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{name}: {value!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    if path and not allow_path:
        raise ConfigError(f"{name}: {value!r} must not have a path")
    return f"{parts.scheme}://{parts.netloc}{path}"


def positive(name: str, value: object) -> float:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: expected a number of seconds, got {value!r}"
        ) from None
    if not number > 0:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")
    return number


def count(name: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, got {value!r}")
    return number


def workers(name: str, value: object) -> int | None:
    """A number of worker processes, or None for "auto" (decided at start)."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(
            f"{name}: expected a number of processes or auto, got {value!r}"
        ) from None
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, got {value!r}")
    return number


def file(name: str, value: object) -> Path:
    path = Path(str(value))
    if not path.is_file():
        raise ConfigError(f"{name}: {value!r} is not a readable file")
    return path


def ports(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}: expected one or more endpoint strings")
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{name}: every endpoint must be a non-empty string")
    for endpoint in value:
        check_endpoint(name, endpoint)
    return tuple(value)


# A check outside the systemd unit (--check-config) cannot have the sockets
# systemd passes at start: there a systemd: port is taken as given.
_SYSTEMD_SOCKETS_ASSUMED: ContextVar[bool] = ContextVar("systemd", default=False)
NO_SYSTEMD_SOCKET = (
    "no such socket inherited from systemd: a systemd: port needs "
    "socket activation (a .socket unit, see deploy/systemd/)"
)


@contextmanager
def systemd_sockets_assumed() -> Iterator[None]:
    """Within: a systemd: port without its inherited socket parses."""
    token = _SYSTEMD_SOCKETS_ASSUMED.set(True)
    try:
        yield
    finally:
        _SYSTEMD_SOCKETS_ASSUMED.reset(token)


def check_endpoint(name: str, endpoint: str) -> None:
    """Parse (without listening) so a typo fails at start, not at bind time."""
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, endpoint)
    except Exception as e:
        reason = endpoint_failure(endpoint, e)
        if NO_SYSTEMD_SOCKET in reason and _SYSTEMD_SOCKETS_ASSUMED.get():
            return  # also an acme: port's wrapped systemd: endpoint
        raise ConfigError(f"{name}: invalid endpoint {endpoint!r}: {reason}") from None


def endpoint_failure(endpoint: str, error: Exception) -> str:
    """Why ``endpoint`` did not parse, in words (also for a wrapped one).

    Twisted's ``systemd:`` parser indexes the inherited descriptors, so
    without socket activation it fails with a bare IndexError or KeyError.
    """
    if "systemd:" in endpoint and isinstance(error, (IndexError, KeyError)):
        return NO_SYSTEMD_SOCKET
    return str(error) or type(error).__name__


def endpoint(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected an endpoint string, got {value!r}")
    check_endpoint(name, value)
    return value


def seconds(name: str, value: object) -> float:
    """Like positive, but 0 is allowed (no wait at all)."""
    return 0.0 if str(value).strip() in ("0", "0.0") else positive(name, value)


def log_format(name: str, value: object) -> str:
    if value not in ("text", "json"):
        raise ConfigError(f"{name}: expected text or json, got {value!r}")
    return str(value)


def optional_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


_LIBRARY_PREFIX = {"auto": None, "on": True, "off": False, True: True, False: False}


def library_prefix(name: str, value: object) -> bool | None:
    key = value.lower() if isinstance(value, str) else value
    if key not in _LIBRARY_PREFIX:
        raise ConfigError(f"{name}: expected auto, on or off, got {value!r}")
    return _LIBRARY_PREFIX[key]


_BOOLEANS = {"on": True, "off": False, "true": True, "false": False}


def flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"([0-9]*\.?[0-9]+)\s*(?:([KMGT])I?B?|B)?")


def size(name: str, value: object) -> int:
    """Bytes, or a number with a binary unit: 500M, 20G, 20Gi, 20GiB, 1.5T."""
    match = _SIZE_RE.fullmatch(str(value).strip().upper())
    if match is None:
        raise ConfigError(f"{name}: expected a size such as 20G, got {value!r}")
    size = int(float(match[1]) * _SIZE_UNITS[match[2] or ""])
    if size < 1:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")
    return size


def directory(name: str, value: object) -> Path:
    """A cache directory Docxy can use: created at start, not here (a check
    of the configuration must not leave one behind, owned by whoever ran it)."""
    path = Path(str(value))
    try:
        check_usable(path)
    except CacheDirError as e:
        raise ConfigError(f"{name}: {e}") from None
    return path


def names(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ConfigError(f"{name}: expected a list of names, got {value!r}")
    return tuple(value)


def url(name: str, value: object) -> str:
    return http_url(name, value, allow_path=False)


def upstream_url(name: str, value: object) -> str:
    """An upstream's URL may have a path: another Docxy's ``/<alias>`` mount
    (``http://regional:5000/ghcr.io``) is how a node tier reaches one of the
    regional tier's upstreams other than its default."""
    return http_url(name, value, allow_path=True)


def realm(name: str, value: object) -> str:
    return http_url(name, value, allow_path=True)


def table(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table of upstreams")
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(name: str, value: object) -> tuple[Network, ...]:
    """CIDR blocks (IPv4 and IPv6); a bare address is a block of one."""
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value.strip()) if v]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) for v in value
    ):
        raise ConfigError(f"{name}: expected a list of CIDR blocks, got {value!r}")
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: {item!r} is not an address or CIDR block"
            ) from None
    return tuple(out)


def optional_count(name: str, value: object) -> int | None:
    """A whole number, or off."""
    if str(value).strip().lower() in ("off", "0", "false"):
        return None
    return count(name, value)


def rate(name: str, value: object) -> float | None:
    """Requests per second, or off."""
    if str(value).strip().lower() in ("off", "0", "false"):
        return None
    return positive(name, value)
