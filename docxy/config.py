"""Docxy's configuration: defaults, a TOML file, the command line, validation.

Every setting has one name, used both as ``--name`` on the command line and
as ``name = ...`` in the TOML file; the command line wins. Anything invalid
raises :class:`ConfigError` with a one-line reason before anything listens.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import config_values as parse
from .cache.directory import default_cache_dir
from .config_values import ConfigError as ConfigError
from .credentials import load_credentials
from .shared_ports import available_cores, shareable
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
    # Who may use the mirror (docxy.access_control, docs/access.md).
    allow: tuple[parse.Network, ...] = ()
    trusted_proxies: tuple[parse.Network, ...] = ()
    htpasswd: Path | None = None
    anonymous: bool = False
    token_key_file: Path | None = None
    token_lifetime: float = 300.0
    client_rate: float | None = None
    client_burst: int = 20
    ratelimit_warning: int | None = 10
    shutdown_timeout: float = 30.0
    log_format: str = "text"
    # Reactor processes sharing the listening sockets (docs/scaling.md);
    # build_config decides "auto". 1: one process, no supervisor.
    workers: int = 1

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


# setting name -> parser. Settings marked legacy describe the default
# upstream the simple way (one upstream on the command line).
SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "port": parse.ports,
    "public-url": parse.url,
    "upstream": parse.upstream_url,
    "upstream-ca": parse.file,
    "upstream-realm": parse.realm,
    "upstream-service": parse.optional_str,
    "upstream-username": parse.optional_str,
    "upstream-password-file": parse.optional_str,
    "upstream-token-file": parse.optional_str,
    "upstream-docker-config": parse.optional_str,
    "library-prefix": parse.library_prefix,
    "preset": parse.names,
    "default-upstream": parse.optional_str,
    "upstreams": parse.table,
    "connect-timeout": parse.positive,
    "header-timeout": parse.positive,
    "idle-timeout": parse.positive,
    "client-header-timeout": parse.positive,
    "max-connections": parse.count,
    "https-redirect": parse.flag,
    "cache-dir": parse.directory,
    "no-cache": parse.flag,
    "cache-max-size": parse.size,
    "cache-auth-ttl": parse.positive,
    "cache-freshness": parse.positive,
    "metrics-port": parse.endpoint,
    "allow": parse.networks,
    "trusted-proxies": parse.networks,
    "htpasswd": parse.file,
    "anonymous": parse.flag,
    "token-key-file": parse.optional_str,
    "token-lifetime": parse.positive,
    "client-rate": parse.rate,
    "client-burst": parse.count,
    "ratelimit-warning": parse.optional_count,
    "shutdown-timeout": parse.seconds,
    "log-format": parse.log_format,
    "workers": parse.workers,
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
    "allow": "allow",
    "trusted-proxies": "trusted_proxies",
    "htpasswd": "htpasswd",
    "anonymous": "anonymous",
    "token-lifetime": "token_lifetime",
    "client-rate": "client_rate",
    "client-burst": "client_burst",
    "ratelimit-warning": "ratelimit_warning",
    "shutdown-timeout": "shutdown_timeout",
    "log-format": "log_format",
}

# Keys of one [upstreams.<name>] table -> parser.
UPSTREAM_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "url": parse.upstream_url,
    "library-prefix": parse.library_prefix,
    "namespaces": parse.names,
    "aliases": parse.names,
    "hosts": parse.names,
    "realm": parse.realm,
    "service": parse.optional_str,
    "realm-hosts": parse.names,
    "username": parse.optional_str,
    "password-file": parse.optional_str,
    "token-file": parse.optional_str,
    "docker-config": parse.optional_str,
}
# The account keys (docxy.credentials), without their upstream- prefix.
ACCOUNT_KEYS = ("username", "password-file", "token-file", "docker-config")


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
    if "token-key-file" in values:
        fields["token_key_file"] = Path(values["token-key-file"])
    if values.get("no-cache"):  # wins over a cache-dir (e.g. from the file)
        fields["cache_dir"] = None
    elif "cache_dir" not in fields:
        fields["cache_dir"] = default_cache_dir()
    ports = fields.get("ports", Config.ports)
    fields["workers"] = _workers(values.get("workers"), ports)
    if fields.get("https_redirect") and not fields["public_url"].startswith("https:"):
        raise ConfigError("https-redirect: needs an https:// public-url to redirect to")
    return Config(**fields)


def _workers(given: int | None, ports: tuple[str, ...]) -> int:
    """``auto``: one per core, or one if a port cannot be shared by workers."""
    unshared = [p for p in ports if not shareable(p)]
    if given is None:
        return 1 if unshared else available_cores()
    if given > 1 and unshared:
        raise ConfigError(
            f"workers: {unshared[0]!r} cannot be shared by worker processes "
            "(tcp:, ssl:, systemd: INET ports and acme: ports on them can; "
            "see docs/scaling.md); "
            "use workers = 1"
        )
    return given


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
    account = {k: values.get(f"upstream-{k}") for k in ACCOUNT_KEYS}
    if any(v is not None for v in account.values()):
        if base.credentials is not None:
            raise ConfigError(
                f"upstream-username: the account of {default!r} is also set in "
                f"[upstreams.{default}]; set it once"
            )
        base = replace(base, credentials=_account("upstream-", base.url, account))
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
    account = {k: parsed.pop(k, None) for k in ACCOUNT_KEYS}
    fields = {key.replace("-", "_"): value for key, value in parsed.items()}
    if fields.get("library_prefix", False) is None:
        fields["library_prefix"] = base.library_prefix
    upstream = replace(base, **fields)
    if any(v is not None for v in account.values()):
        credentials = _account(f"{where}.", upstream.url, account)
        upstream = replace(upstream, credentials=credentials)
    return upstream


def _account(where: str, url: str, keys: dict[str, Any]) -> Any:
    return load_credentials(
        where,
        url,
        keys["username"],
        keys["password-file"],
        keys["token-file"],
        keys["docker-config"],
    )


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
