"""Docxy's configuration: defaults, a TOML file, the command line, validation.

Every setting has one name, used both as ``--name`` on the command line and
as ``name = ...`` in the TOML file; the command line wins. Anything invalid
raises :class:`ConfigError` with a one-line reason before anything listens.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cache.directory import default_cache_dir
from .upstream_set import (
    ALIAS_RE,
    DOCKER_HUB_URL,
    PRESETS,
    UPSTREAM_NAME_RE,
    DuplicateError,
    Upstream,
    UpstreamSet,
)

DOCKER_HUB = DOCKER_HUB_URL


class ConfigError(Exception):
    """Bad configuration; the message is one line naming the setting."""


@dataclass(frozen=True)
class Config:
    """Every setting, validated, in one immutable value.

    Built once at start by :func:`build_config` and passed down, so no
    module reads options or the environment on its own and a bad value
    stops the daemon before anything listens.
    """

    ports: tuple[str, ...] = ("tcp:5000",)
    public_url: str = "http://127.0.0.1:5000"
    public_url_given: bool = False
    upstreams: tuple[Upstream, ...] = (PRESETS["docker.io"],)
    default_upstream: str = "docker.io"
    upstream_ca: Path | None = None
    connect_timeout: float = 10.0
    header_timeout: float = 60.0
    idle_timeout: float = 120.0
    client_header_timeout: float = 30.0
    max_connections: int = 32
    https_redirect: bool = False
    # None: no cache (--no-cache); build_config fills in the default dir.
    cache_dir: Path | None = None
    # None: min(10 GiB, half the free space), decided at start.
    cache_max_size: int | None = None
    cache_auth_ttl: float = 300.0
    cache_freshness: float = 300.0
    metrics_port: str | None = None
    shutdown_timeout: float = 30.0
    log_format: str = "text"

    @property
    def default(self) -> Upstream:
        return next(u for u in self.upstreams if u.name == self.default_upstream)

    def token_realm(self, upstream: Upstream) -> str:
        """The realm repository challenges of ``upstream`` name.

        From config, never from Host. One per upstream, so a token request
        reaches the right upstream by its path alone, whatever the scope.
        """
        return f"{self.public_url}/auth/{upstream.name}/token"

    def ping_realm(self, upstream: Upstream) -> str:
        """The realm ``/v2/`` challenges name.

        The default upstream's is the mirror-wide ``/auth/token``, which also
        routes by path alias in the scope: podman and dockerd take the realm
        of their ``/v2/`` ping for every repository, and podman names those
        with the alias of a mirror location (``repository:ghcr/owner/img``).
        """
        if upstream.name == self.default_upstream:
            return f"{self.public_url}/auth/token"
        return self.token_realm(upstream)


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
        if "systemd:" in endpoint and isinstance(e, (IndexError, KeyError)):
            reason = (
                "no such socket inherited from systemd: a systemd: port needs "
                "socket activation (a .socket unit, see deploy/systemd/)"
            )
        raise ConfigError(f"{name}: invalid endpoint {endpoint!r}: {reason}") from None


def _endpoint(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected an endpoint string, got {value!r}")
    _check_endpoint(name, value)
    return value


def _seconds(name: str, value: object) -> float:
    """Like _positive, but 0 is allowed (no wait at all)."""
    return 0.0 if str(value).strip() in ("0", "0.0") else _positive(name, value)


def _log_format(name: str, value: object) -> str:
    if value not in ("text", "json"):
        raise ConfigError(f"{name}: expected text or json, got {value!r}")
    return str(value)


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


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"([0-9]*\.?[0-9]+)\s*(?:([KMGT])I?B?|B)?")


def _size(name: str, value: object) -> int:
    """Bytes, or a number with a binary unit: 500M, 20G, 20Gi, 20GiB, 1.5T."""
    match = _SIZE_RE.fullmatch(str(value).strip().upper())
    if match is None:
        raise ConfigError(f"{name}: expected a size such as 20G, got {value!r}")
    size = int(float(match[1]) * _SIZE_UNITS[match[2] or ""])
    if size < 1:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")
    return size


def _directory(name: str, value: object) -> Path:
    path = Path(str(value))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{name}: cannot create {value!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{name}: {value!r} is not writable")
    return path


def _names(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ConfigError(f"{name}: expected a list of names, got {value!r}")
    return tuple(value)


def _url(name: str, value: object) -> str:
    return _http_url(name, value, allow_path=False)


def _realm(name: str, value: object) -> str:
    return _http_url(name, value, allow_path=True)


def _table(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table of upstreams")
    return value


# setting name -> parser. Settings marked legacy describe the default
# upstream the simple way (one upstream on the command line).
SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "port": _ports,
    "public-url": _url,
    "upstream": _url,
    "upstream-ca": _file,
    "upstream-realm": _realm,
    "upstream-service": _optional_str,
    "library-prefix": _library_prefix,
    "preset": _names,
    "default-upstream": _optional_str,
    "upstreams": _table,
    "connect-timeout": _positive,
    "header-timeout": _positive,
    "idle-timeout": _positive,
    "client-header-timeout": _positive,
    "max-connections": _count,
    "https-redirect": _flag,
    "cache-dir": _directory,
    "no-cache": _flag,
    "cache-max-size": _size,
    "cache-auth-ttl": _positive,
    "cache-freshness": _positive,
    "metrics-port": _endpoint,
    "shutdown-timeout": _seconds,
    "log-format": _log_format,
}
_PLAIN_FIELDS = {
    "port": "ports",
    "public-url": "public_url",
    "upstream-ca": "upstream_ca",
    "connect-timeout": "connect_timeout",
    "header-timeout": "header_timeout",
    "idle-timeout": "idle_timeout",
    "client-header-timeout": "client_header_timeout",
    "max-connections": "max_connections",
    "https-redirect": "https_redirect",
    "cache-dir": "cache_dir",
    "cache-max-size": "cache_max_size",
    "cache-auth-ttl": "cache_auth_ttl",
    "cache-freshness": "cache_freshness",
    "metrics-port": "metrics_port",
    "shutdown-timeout": "shutdown_timeout",
    "log-format": "log_format",
}

# Keys of one [upstreams.<name>] table -> parser.
UPSTREAM_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "url": _url,
    "library-prefix": _library_prefix,
    "namespaces": _names,
    "aliases": _names,
    "hosts": _names,
    "realm": _realm,
    "service": _optional_str,
}


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path!r} is not valid TOML: {e}") from None
    if "listen" in data:  # the alias --listen has on the command line
        if "port" in data:
            raise ConfigError(f"listen: an alias of port; set one of them in {path!r}")
        data["port"] = data.pop("listen")
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        hint = _nearest(unknown[0], [*SETTINGS, "listen"])
        raise ConfigError(f"config: unknown setting {unknown[0]!r} in {path!r}{hint}")
    return data


def _nearest(name: str, known: list[str]) -> str:
    """`` (did you mean 'public-url'?)`` for ``public_url``, or nothing."""
    close = difflib.get_close_matches(name.replace("_", "-"), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_config(
    cli: Mapping[str, object], file_settings: Mapping[str, object] | None = None
) -> Config:
    """Merge defaults < file < command line, validating every value."""
    merged: dict[str, object] = dict(file_settings or {})
    merged.update({k: v for k, v in cli.items() if v is not None and v != []})
    values: dict[str, Any] = {}
    for name, value in merged.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = SETTINGS[name](name, value)
    fields: dict[str, Any] = {
        field: values[name] for name, field in _PLAIN_FIELDS.items() if name in values
    }
    upstreams, default = build_upstreams(values)
    fields["upstreams"], fields["default_upstream"] = upstreams, default
    fields["public_url_given"] = "public_url" in fields
    if "public_url" not in fields:
        fields["public_url"] = default_public_url(fields.get("ports", Config.ports))
    if values.get("no-cache"):  # wins over a cache-dir (e.g. from the file)
        fields["cache_dir"] = None
    elif "cache_dir" not in fields:
        fields["cache_dir"] = default_cache_dir()
    if fields.get("https_redirect") and not fields["public_url"].startswith("https:"):
        raise ConfigError("https-redirect: needs an https:// public-url to redirect to")
    return Config(**fields)


def build_upstreams(values: Mapping[str, Any]) -> tuple[tuple[Upstream, ...], str]:
    """The upstream set: enabled presets, [upstreams.*] tables, the default.

    ``upstream``, ``library-prefix``, ``upstream-realm`` and
    ``upstream-service`` describe the default upstream, so the simple
    one-upstream command line keeps working alongside the tables.
    """
    entries: dict[str, Upstream] = {}
    for preset in values.get("preset", ()):
        if preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise ConfigError(f"preset: unknown preset {preset!r} (known: {known})")
        entries[preset] = PRESETS[preset]
    for name, table in values.get("upstreams", {}).items():
        entries[name] = _upstream_from_table(name, table, entries.get(name))
    # ``upstream`` changes only the URL of the default upstream: its name
    # (and so containerd's ?ns=docker.io) stays docker.io unless
    # default-upstream names another.
    default = values.get("default-upstream") or "docker.io"
    base = entries.get(default) or PRESETS.get(default)
    if base is None:
        url = values.get("upstream")
        if url is None:
            raise ConfigError(
                f"default-upstream: {default!r} is not configured (no preset, "
                "[upstreams] table or upstream URL)"
            )
        base = Upstream(default, url, namespaces=(default,), aliases=(default,))
    overrides: dict[str, Any] = {
        field: values[name]
        for name, field in (
            ("upstream", "url"),
            ("upstream-realm", "realm"),
            ("upstream-service", "service"),
        )
        if name in values
    }
    base = replace(base, **overrides)
    if values.get("library-prefix") is not None:
        base = replace(base, library_prefix=values["library-prefix"])
    entries[default] = base
    upstreams = tuple(entries.values())
    for upstream in upstreams:
        _check_realm(upstream, upstream is base)
    try:
        UpstreamSet(upstreams, base)
    except DuplicateError as e:
        raise ConfigError(f"upstreams: {e}") from None
    return upstreams, default


def _check_realm(upstream: Upstream, default: bool) -> None:
    """A configured realm is used as is: plain http would send credentials
    and tokens of an https upstream in clear text, so it is refused."""
    realm = upstream.realm or ""
    if upstream.url.startswith("https:") and realm.startswith("http:"):
        where = "upstream-realm" if default else f"upstreams.{upstream.name}.realm"
        raise ConfigError(
            f"{where}: {realm!r} is plain http for the https upstream "
            f"{upstream.url!r}; credentials would travel in clear text: use https"
        )


def _upstream_from_table(name: str, table: object, base: Upstream | None) -> Upstream:
    where = f"upstreams.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    if UPSTREAM_NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"{where}: a name is lower-case letters, digits, . and -")
    unknown = sorted(set(table) - set(UPSTREAM_KEYS))
    if unknown:
        hint = _nearest(unknown[0], list(UPSTREAM_KEYS))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}")
    parsed = {k: UPSTREAM_KEYS[k](f"{where}.{k}", v) for k, v in table.items()}
    base = base or PRESETS.get(name)
    if base is None:
        if "url" not in parsed:
            raise ConfigError(f"{where}: url is required (not a preset)")
        base = Upstream(name, parsed["url"], namespaces=(name,), aliases=(name,))
    for alias in parsed.get("aliases", ()):
        if ALIAS_RE.fullmatch(alias) is None:
            raise ConfigError(f"{where}.aliases: {alias!r} is not a valid path prefix")
    fields = {key.replace("-", "_"): value for key, value in parsed.items()}
    if fields.get("library_prefix", False) is None:
        fields["library_prefix"] = base.library_prefix
    return replace(base, **fields)


def default_public_url(ports: tuple[str, ...]) -> str:
    """The URL clients most likely use, from the first port.

    An ``acme:`` port names its domains: https on the first one. A plain
    TCP/SSL port only gives a loopback URL, right for same-host clients.
    """
    kind, _, rest = ports[0].partition(":")
    if kind == "acme":
        parts = rest.split(":")
        domains = [
            p.removeprefix("domains=") for p in parts if p.startswith("domains=")
        ]
        numbers = [p for p in parts[2:] if p.isdigit()]
        if domains and domains[0]:
            host = domains[0].split(",")[0]
            port = f":{numbers[0]}" if numbers and numbers[0] != "443" else ""
            return f"https://{host}{port}"
    number = rest.split(":")[0].removeprefix("port=")
    if kind in ("tcp", "ssl") and number.isdigit():
        scheme = "https" if kind == "ssl" else "http"
        return f"{scheme}://127.0.0.1:{number}"
    raise ConfigError(f"public-url: required when listening on {ports[0]!r}")
