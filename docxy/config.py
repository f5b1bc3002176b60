"""Docxy's configuration: defaults, a TOML file, the command line, validation.

Every setting has one name, used both as ``--name`` on the command line and
as ``name = ...`` in the TOML file; the command line wins. Anything invalid
raises :class:`ConfigError` with a one-line reason before anything listens.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DOCKER_HUB = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})


class ConfigError(Exception):
    """Bad configuration; the message is one line naming the setting."""


@dataclass(frozen=True)
class Config:
    ports: tuple[str, ...] = ("tcp:5000",)
    public_url: str = "http://127.0.0.1:5000"
    public_url_given: bool = False
    upstream: str = DOCKER_HUB
    upstream_ca: Path | None = None
    upstream_realm: str | None = None
    upstream_service: str | None = None
    library_prefix: bool = True
    connect_timeout: float = 10.0
    header_timeout: float = 60.0
    idle_timeout: float = 120.0
    max_connections: int = 32
    https_redirect: bool = False

    @property
    def token_realm(self) -> str:
        """The realm every challenge names: derived from config, never from Host."""
        return f"{self.public_url}/auth/token"


def _http_url(name: str, value: object, *, allow_path: bool) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a URL string, got {value!r}")
    parts = urlsplit(value.strip())
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


def _positive(name: str, value: object) -> float:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: expected a number of seconds, got {value!r}"
        ) from None
    if not number > 0:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")
    return number


def _count(name: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, got {value!r}")
    return number


def _file(name: str, value: object) -> Path:
    path = Path(str(value))
    if not path.is_file():
        raise ConfigError(f"{name}: {value!r} is not a readable file")
    return path


def _ports(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}: expected one or more endpoint strings")
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{name}: every endpoint must be a non-empty string")
    for endpoint in value:
        _check_endpoint(name, endpoint)
    return tuple(value)


def _check_endpoint(name: str, endpoint: str) -> None:
    """Parse (without listening) so a typo fails at start, not at bind time."""
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, endpoint)
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise ConfigError(f"{name}: invalid endpoint {endpoint!r}: {reason}") from None


def _optional_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


_LIBRARY_PREFIX = {"auto": None, "on": True, "off": False, True: True, False: False}


def _library_prefix(name: str, value: object) -> bool | None:
    key = value.lower() if isinstance(value, str) else value
    if key not in _LIBRARY_PREFIX:
        raise ConfigError(f"{name}: expected auto, on or off, got {value!r}")
    return _LIBRARY_PREFIX[key]


_BOOLEANS = {"on": True, "off": False, "true": True, "false": False}


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


# setting name -> (Config field, parser)
SETTINGS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "port": ("ports", _ports),
    "public-url": ("public_url", lambda n, v: _http_url(n, v, allow_path=False)),
    "upstream": ("upstream", lambda n, v: _http_url(n, v, allow_path=False)),
    "upstream-ca": ("upstream_ca", _file),
    "upstream-realm": ("upstream_realm", lambda n, v: _http_url(n, v, allow_path=True)),
    "upstream-service": ("upstream_service", _optional_str),
    "library-prefix": ("library_prefix", _library_prefix),
    "connect-timeout": ("connect_timeout", _positive),
    "header-timeout": ("header_timeout", _positive),
    "idle-timeout": ("idle_timeout", _positive),
    "max-connections": ("max_connections", _count),
    "https-redirect": ("https_redirect", _flag),
}


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path!r} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"config: unknown setting {unknown[0]!r} in {path!r}")
    return data


def build_config(
    cli: Mapping[str, object], file_settings: Mapping[str, object] | None = None
) -> Config:
    """Merge defaults < file < command line, validating every value."""
    merged: dict[str, object] = dict(file_settings or {})
    merged.update({k: v for k, v in cli.items() if v is not None and v != []})
    fields: dict[str, Any] = {}
    for name, value in merged.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}")
        field, parse = SETTINGS[name]
        fields[field] = parse(name, value)
    if fields.get("library_prefix") is None:
        host = urlsplit(fields.get("upstream", DOCKER_HUB)).hostname or ""
        fields["library_prefix"] = host in DOCKER_HUB_HOSTS
    fields["public_url_given"] = "public_url" in fields
    if "public_url" not in fields:
        fields["public_url"] = default_public_url(fields.get("ports", Config.ports))
    if fields.get("https_redirect") and not fields["public_url"].startswith("https:"):
        raise ConfigError("https-redirect: needs an https:// public-url to redirect to")
    return Config(**fields)


def default_public_url(ports: tuple[str, ...]) -> str:
    """A loopback URL for the first TCP/SSL port: right for a same-host client only."""
    kind, _, rest = ports[0].partition(":")
    number = rest.split(":")[0].removeprefix("port=")
    if kind in ("tcp", "ssl") and number.isdigit():
        scheme = "https" if kind == "ssl" else "http"
        return f"{scheme}://127.0.0.1:{number}"
    raise ConfigError(f"public-url: required when listening on {ports[0]!r}")
