"""What Docxy checks at start before it creates, locks or listens: in one place.

Every setting is parsed by :func:`docxy.config.build_config` (the options,
the ``DOCXY_*`` environment, the file). What needs the files a
configuration names is checked here, without creating or changing any:
the cache directory, the htpasswd file, the token key, the upstream CA
bundle and the certificates of the TLS ports. The daemon runs these checks
(:func:`require`) and stops at the first error with its one line;
``twistd docxy --check-config`` (:mod:`docxy.check_config`) reports each
finding of the same checks.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from .access_setup import key_refusal, token_key_path
from .cache.directory import CacheDirError, check_usable
from .client_tokens import parse_key
from .config import Config
from .config_values import ConfigError
from .htpasswd import read_hashes
from .tls.certs import KeyAndChain, dns_names
from .tls.endpoint import AcmeEndpoint
from .tls.store import AcmeStore

log = Logger()
OK, WARNING, ERROR = "ok", "warning", "error"
# A certificate closer to its end than this is worth a warning.
EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class Finding:
    """One line of a check: ``level`` is ok, warning or error."""

    level: str
    text: str
    # An error: the line the daemon prints when it stops at start.
    stop: str = ""

    @property
    def line(self) -> str:
        return f"{self.level}: {self.text}"


def refusal(error: ConfigError | str) -> Finding:
    """The finding of a configuration error, and the line it stops start with."""
    return Finding(ERROR, str(error), f"docxy: configuration error: {error}")


def require(config: Config, reactor: Any) -> None:
    """At start: raise :class:`ConfigError` for the first error, log the warnings."""
    for finding in file_findings(config, reactor):
        if finding.level == ERROR:
            raise ConfigError(finding.text)
        if finding.level == WARNING:
            log.warn("{warning}", warning=finding.text)


def file_findings(
    config: Config, reactor: Any, now: datetime.datetime | None = None
) -> list[Finding]:
    """Every check of the files the configuration names, in the order of start."""
    when = now or datetime.datetime.now(datetime.UTC)
    return [
        *cache_dir(config),
        *htpasswd(config),
        *token_key(config),
        *upstream_ca(config),
        *certificates(config, reactor, when),
    ]


def cache_dir(config: Config) -> list[Finding]:
    root = config.cache_dir
    if root is None:
        return [Finding(OK, "no-cache: nothing is cached (a pure proxy)")]
    try:
        exists = check_usable(root)
    except CacheDirError as e:
        return [refusal(f"cache-dir: {e}")]
    state = "exists and is writable" if exists else "is created at start"
    return [Finding(OK, f"cache-dir: {str(root)!r} {state}")]


def htpasswd(config: Config) -> list[Finding]:
    if config.htpasswd is None:
        return []
    try:
        hashes = read_hashes(config.htpasswd)
    except ConfigError as e:
        return [refusal(e)]
    also = ", anonymous pulls too" if config.anonymous else ""
    path = str(config.htpasswd)
    return [Finding(OK, f"htpasswd: {len(hashes)} account(s) in {path!r}{also}")]


def token_key(config: Config) -> list[Finding]:
    """The key of Docxy's tokens: needed with accounts only; created at start."""
    if config.htpasswd is None:
        return []
    path = token_key_path(config)
    if path is None:
        if config.workers > 1:
            return [
                refusal(
                    "token-key-file: needed with workers > 1 and no cache-dir, so "
                    "every worker signs tokens with the same key"
                )
            ]
        return [
            Finding(
                WARNING,
                "token-key-file not set and no cache-dir: Docxy's tokens are "
                "signed with a key of this process only (they end with it, and "
                "replicas do not accept each other's)",
            )
        ]
    try:
        parse_key(path, path.read_bytes())
    except FileNotFoundError as e:
        if path.parent == config.cache_dir or _can_create_in(path.parent):
            return [Finding(OK, f"token-key-file: {str(path)!r} is created at start")]
        return [refusal(key_refusal(path, e))]
    except (OSError, ValueError) as e:
        return [refusal(key_refusal(path, e))]
    found = [Finding(OK, f"token-key-file: {str(path)!r} holds a key")]
    if path.stat().st_mode & 0o077:
        found.append(
            Finding(
                WARNING,
                f"token-key-file: {str(path)!r} is readable by other users "
                "(start makes it 0600 if it can): anyone who reads it can sign "
                "tokens",
            )
        )
    return found


def _can_create_in(directory: Path) -> bool:
    try:
        return check_usable(directory)
    except CacheDirError:
        return False


def upstream_ca(config: Config) -> list[Finding]:
    """The extra CA bundle: read now, not at the first upstream connection."""
    path = config.upstream_ca
    if path is None:
        return []
    try:
        bundle = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as e:
        return [refusal(f"upstream-ca: cannot read {str(path)!r}: {e.strerror}")]
    except ValueError:
        return [refusal(f"upstream-ca: {str(path)!r} holds no PEM certificate")]
    return [
        Finding(
            OK,
            f"upstream-ca: {len(bundle)} certificate(s) in {str(path)!r}, trusted "
            "besides the system CAs",
        )
    ]


def certificates(
    config: Config, reactor: Any, now: datetime.datetime
) -> Iterator[Finding]:
    """How long the certificate of each ssl: and acme: port is still valid."""
    for port in listening_ports(config):
        endpoint = endpoint_of(reactor, port)
        if isinstance(endpoint, AcmeEndpoint):
            yield from _acme(port, endpoint, now)
            continue
        options = getattr(endpoint, "_sslContextFactory", None)
        leaf = getattr(options, "certificate", None)
        if leaf is None:
            continue  # no TLS of Docxy's own on this port
        chain = [leaf, *(getattr(options, "extraCertChain", None) or ())]
        certs = [c.to_cryptography() for c in chain]
        yield _validity(f"port {port}: certificate", certs, now, renewed=False)


def endpoint_of(reactor: Any, port: str) -> Any:
    """The endpoint of a port string that parsed, or None for a systemd:
    socket that a check outside the unit does not have
    (:func:`docxy.config_values.systemd_sockets_assumed`)."""
    try:
        return serverFromString(reactor, port)
    except Exception:
        return None


def listening_ports(config: Config) -> tuple[str, ...]:
    """The mirror's ports, then the metrics port if there is one."""
    metrics = () if config.metrics_port is None else (config.metrics_port,)
    return (*config.ports, *metrics)


def _acme(
    port: str, endpoint: AcmeEndpoint, now: datetime.datetime
) -> Iterator[Finding]:
    spec = endpoint.spec
    store = AcmeStore(spec.state_dir, spec.directory)
    for name in spec.domains:
        stored: KeyAndChain | None = store.load(name)
        if stored is None:
            yield Finding(
                OK,
                f"port {port}: no certificate for {name} yet: ordered from "
                f"{spec.directory} at start (a placeholder is served until then)",
            )
        else:
            what = f"port {port}: stored certificate"
            yield _validity(what, list(stored.chain), now, renewed=True)


def _validity(
    what: str, chain: list[x509.Certificate], now: datetime.datetime, renewed: bool
) -> Finding:
    """``chain``: leaf first; the finding is about the one that ends first."""
    leaf = chain[0]
    names = ", ".join(dns_names(leaf)) or leaf.subject.rfc4514_string() or "no name"
    first = min(chain, key=lambda c: c.not_valid_after_utc)
    of = "" if first is leaf else f" (its chain's {first.subject.rfc4514_string()})"
    until = first.not_valid_after_utc
    days = (until - now).days
    head = f"{what} for {names}{of}"
    if now < leaf.not_valid_before_utc:
        start = leaf.not_valid_before_utc.date().isoformat()
        return Finding(WARNING, f"{head} is not valid before {start}")
    if until <= now:
        after = "Docxy orders a new one at start" if renewed else "clients refuse it"
        return Finding(
            WARNING, f"{head} expired on {until.date().isoformat()}: {after}"
        )
    text = f"{head} is valid until {until.date().isoformat()} ({days} days left)"
    if days < EXPIRY_WARNING_DAYS:
        tail = "; renewal is due and has not happened" if renewed else ""
        return Finding(WARNING, f"{text}{tail}")
    return Finding(OK, text)
