"""``twistd docxy``: command-line options and the service they build.

Shaped like Twisted's ``web/tap.py``: :class:`Options` parses and validates,
:func:`makeService` wires. Bad configuration prints one line and exits
before anything listens.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from . import __version__
from .config import Config, ConfigError, build_config, load_file
from .config_values import systemd_sockets_assumed
from .environment import settings_from_env

_DEFAULTS = Config()
_FLAGS = frozenset({"https-redirect", "no-cache", "anonymous"})
# Command-line only: not settings (never read from the environment or file).
_COMMANDS = frozenset({"config", "check-config"})


class Options(usage.Options):
    """``twistd docxy`` options, merged in :meth:`postOptions` into one Config.

    The command line wins over ``DOCXY_*`` variables, which win over the
    TOML file; a bad setting stops twistd with one line before anything
    listens.
    """

    synopsis = "[options]"
    longdesc = (
        "Docxy: a pull-through mirror for Docker / OCI registries. Point "
        "dockerd's registry-mirrors, containerd's hosts.toml or podman's "
        "registries.conf at it. Every option can also be set in a TOML file "
        'given with --config (same names, e.g. public-url = "..."), or as a '
        "DOCXY_* environment variable (DOCXY_PUBLIC_URL, DOCXY_CONFIG); the "
        "command line wins over the environment, the environment over the file."
    )
    optFlags: list[list[Any]] = [
        [
            "https-redirect",
            None,
            "On plain-HTTP listeners, answer everything except /health and ACME "
            "HTTP-01 challenges with a 301 to the https public-url.",
        ],
        [
            "no-cache",
            None,
            "Cache nothing: a pure proxy (wins over --cache-dir).",
        ],
        [
            "anonymous",
            None,
            "With --htpasswd: clients without an account may pull too.",
        ],
        [
            "check-config",
            None,
            "Check the configuration (options, DOCXY_* environment, file, the "
            "files they name, the ports) without starting: one line per "
            "finding; exit status 0 if Docxy would start, else 2.",
        ],
    ]
    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file."],
        [
            "public-url",
            None,
            None,
            "URL clients use to reach Docxy (scheme and host[:port], no path); "
            "the token realm is built from it, never from the Host header. "
            "[default: http://127.0.0.1:<port> of a first tcp: port (https "
            "for ssl:), or https://<first domain> for an acme: port]",
        ],
        [
            "upstream",
            None,
            None,
            "URL of the default upstream registry (the one requests that name "
            "no other upstream go to). Only its URL: its name stays docker.io "
            "(so containerd's ?ns=docker.io is served) unless "
            "--default-upstream names another. "
            "[default: https://registry-1.docker.io]",
        ],
        [
            "default-upstream",
            None,
            None,
            "Name of the default upstream (a preset or an [upstreams] table). "
            "[default: docker.io]",
        ],
        [
            "upstream-ca",
            None,
            None,
            "Extra CA bundle (PEM) trusted for upstreams, in addition to the "
            "system CAs.",
        ],
        [
            "upstream-realm",
            None,
            None,
            "Token realm URL of the default upstream; plain http for an https "
            "upstream is refused. [default: discovered from the upstream's "
            "challenge]",
        ],
        [
            "upstream-service",
            None,
            None,
            "Token service name of the default upstream. "
            "[default: from the upstream's challenge]",
        ],
        [
            "upstream-username",
            None,
            None,
            "Docxy's own account at the default upstream: anonymous clients, "
            "cache fills and access probes pull with it (see docs/access.md).",
        ],
        [
            "upstream-password-file",
            None,
            None,
            "File holding the password of --upstream-username (never the "
            "password itself on the command line).",
        ],
        [
            "upstream-token-file",
            None,
            None,
            "File holding an access token of --upstream-username, sent as its "
            "password (Docker Hub, GHCR, Quay personal access tokens).",
        ],
        [
            "upstream-docker-config",
            None,
            None,
            "A Docker config.json whose auths entry for the default upstream is "
            "Docxy's account there.",
        ],
        [
            "library-prefix",
            None,
            None,
            "Prefix 'library/' to one-component names: auto, on or off. "
            "[default: auto, on for Docker Hub]",
        ],
        [
            "connect-timeout",
            None,
            None,
            f"Seconds to connect upstream. [default: {_DEFAULTS.connect_timeout:g}]",
        ],
        [
            "header-timeout",
            None,
            None,
            "Seconds to wait for upstream response headers. "
            f"[default: {_DEFAULTS.header_timeout:g}]",
        ],
        [
            "idle-timeout",
            None,
            None,
            "Seconds a transfer may make no progress (either side) before it "
            "is aborted; there is no total timeout. "
            f"[default: {_DEFAULTS.idle_timeout:g}]",
        ],
        [
            "client-header-timeout",
            None,
            None,
            "Seconds a client has to send a whole request head (request line "
            "and headers) once it starts one, or after it connects; then 408 "
            "and the connection closed. "
            f"[default: {_DEFAULTS.client_header_timeout:g}]",
        ],
        [
            "cache-dir",
            None,
            None,
            "Keep blobs and manifests in this directory (pull-through cache). "
            "[default: /var/cache/docxy for root, else $XDG_CACHE_HOME/docxy "
            "or ~/.cache/docxy]",
        ],
        [
            "cache-max-size",
            None,
            None,
            "Largest total size of cached blobs, e.g. 500G. [default: the "
            "smaller of 10G and half of the free space (plus what is already "
            "cached) at start]",
        ],
        [
            "cache-auth-ttl",
            None,
            None,
            "Seconds an upstream's yes to 'may this client have this blob' is "
            "remembered. [default: 300]",
        ],
        [
            "cache-freshness",
            None,
            None,
            "Seconds a cached tag is served without asking the upstream; after "
            "that a HEAD revalidates it. [default: 300]",
        ],
        [
            "metrics-port",
            None,
            None,
            "Endpoint for /metrics (Prometheus), /health and /ready, e.g. "
            "tcp:9090:interface=127.0.0.1. [default: off]",
        ],
        [
            "shutdown-timeout",
            None,
            None,
            "Seconds SIGTERM waits for transfers in flight before closing them. "
            f"[default: {_DEFAULTS.shutdown_timeout:g}]",
        ],
        [
            "log-format",
            None,
            None,
            "text, or json (one JSON object per line, for log collectors). "
            "[default: text]",
        ],
        [
            "allow",
            None,
            None,
            "Only clients from these networks may use the mirror: CIDR blocks, "
            "IPv4 and IPv6, comma-separated. [default: everyone]",
        ],
        [
            "trusted-proxies",
            None,
            None,
            "Proxies (CIDR blocks) whose X-Forwarded-For names the client. "
            "[default: none]",
        ],
        [
            "htpasswd",
            None,
            None,
            "Accounts of the mirror (htpasswd file, bcrypt): clients log in to "
            "Docxy's token realm and get Docxy's own tokens.",
        ],
        [
            "token-key-file",
            None,
            None,
            "Key signing Docxy's tokens (created if missing; the same file on "
            "every replica). [default: token.key in the cache-dir]",
        ],
        [
            "token-lifetime",
            None,
            None,
            f"Seconds a token of Docxy's realm is valid. "
            f"[default: {_DEFAULTS.token_lifetime:g}]",
        ],
        [
            "client-rate",
            None,
            None,
            "Requests per second one client (account, else address) may make, "
            "on average. [default: off]",
        ],
        [
            "client-burst",
            None,
            None,
            f"Requests a client may make at once above --client-rate. "
            f"[default: {_DEFAULTS.client_burst}]",
        ],
        [
            "ratelimit-warning",
            None,
            None,
            "Log once when an upstream's RateLimit-Remaining falls below this. "
            f"[default: {_DEFAULTS.ratelimit_warning}]",
        ],
        [
            "workers",
            None,
            None,
            "Reactor processes sharing the listening sockets and the cache "
            "(docs/scaling.md); 1: a single process. [default: auto, one per "
            "core, or 1 with a unix: port]",
        ],
        [
            "max-connections",
            None,
            None,
            "Idle upstream connections kept per host. "
            f"[default: {_DEFAULTS.max_connections}]",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["preset"] = []
        self.config: Config | None = None

    def opt_port(self, endpoint: str) -> None:
        """Endpoint to listen on: any Twisted server endpoint string (tcp:, ssl:, unix:, systemd:, ...). Repeatable. [default: tcp:5000]"""  # noqa: E501
        self["port"].append(endpoint)

    def opt_preset(self, name: str) -> None:
        """Also mirror this built-in registry (docker.io, ghcr.io, quay.io, registry.k8s.io, gcr.io, mcr.microsoft.com, public.ecr.aws, nvcr.io). Repeatable."""  # noqa: E501
        self["preset"].append(name)

    def opt_listen(self, endpoint: str) -> None:
        """Alias for --port (the name twistd web uses)."""
        self.opt_port(endpoint)

    def opt_version(self) -> None:
        """Print Docxy's version and exit."""
        print(f"docxy {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        from . import check_config

        checking = bool(self["check-config"])
        try:  # a check outside the systemd unit has none of its sockets
            with systemd_sockets_assumed() if checking else nullcontext():
                env_settings = settings_from_env(os.environ)
                # --config wins over DOCXY_CONFIG
                config_file = self["config"] or env_settings.pop("config", None)
                env_settings.pop("config", None)
                file_settings = load_file(str(config_file)) if config_file else {}
                file_settings.update(env_settings)  # the environment over the file
                # Flags default to 0; only a flag given overrides the file.
                cli = {
                    k: v
                    for k, v in self.items()
                    if k not in _COMMANDS and not (k in _FLAGS and not v)
                }
                config = build_config(cli, file_settings)
        except ConfigError as e:
            if checking:
                raise SystemExit(check_config.refused(e)) from None
            sys.stderr.write(f"docxy: configuration error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        self.config = config
        if checking:  # before twistd daemonizes, writes a pid file or listens
            raise SystemExit(check_config.run(config, str(config_file or "")))


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from .cache.directory import CacheDirError
    from .logs import to_stdout
    from .preflight import require
    from .service import DocxyService, make_service, supervise

    config = options.config
    assert config is not None
    service: DocxyService
    try:
        require(config, reactor)  # what --check-config checks of the files
        if config.workers > 1:
            twistd_options = getattr(options, "parent", None) or {}
            service = supervise(config, reactor, to_stdout(twistd_options))
        else:
            service = make_service(config, reactor)
    except CacheDirError as e:
        sys.stderr.write(f"docxy: configuration error: cache-dir: {e}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
    except ConfigError as e:  # the accounts file or the token key
        sys.stderr.write(f"docxy: configuration error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
    if config.log_format == "json":
        from .logs import json_observer

        service.log_observer = json_observer(getattr(options, "parent", None) or {})
    return service
