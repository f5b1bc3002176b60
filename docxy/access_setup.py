"""The AccessGate a configuration asks for, with its accounts and token key."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from .access_control import AccessGate
from .client_rate import ClientRate
from .client_tokens import KEY_BYTES, TokenSigner, load_or_create_key
from .config import Config
from .config_values import ConfigError
from .htpasswd import Accounts

log = Logger()
KEY_FILE = "token.key"


def build_gate(config: Config, reactor: Any) -> AccessGate:
    """Raises ConfigError for an unreadable htpasswd or token key."""
    accounts = signer = None
    if config.htpasswd is not None:
        accounts = Accounts.load(config.htpasswd)
        signer = TokenSigner(token_key(config), reactor, config.token_lifetime)
        log.info(
            "accounts: {count} from {path}; Docxy's tokens last {lifetime:g} s"
            "{anonymous}",
            count=len(accounts),
            path=str(config.htpasswd),
            lifetime=config.token_lifetime,
            anonymous=", anonymous pulls allowed too" if config.anonymous else "",
        )
    if config.allow:
        log.info("allow: {networks}", networks=", ".join(str(n) for n in config.allow))
    rate = None
    if config.client_rate is not None:
        rate = ClientRate(reactor, config.client_rate, config.client_burst)
    return AccessGate(
        config.allow,
        config.trusted_proxies,
        accounts,
        signer,
        config.anonymous,
        rate,
    )


def token_key(config: Config) -> bytes:
    """The key Docxy's tokens are signed with (its file created if missing).

    Without a file (no token-key-file, no cache-dir): a key of this process
    only, which :mod:`docxy.preflight` warns about at start.
    """
    path = token_key_path(config)
    if path is None:
        return secrets.token_bytes(KEY_BYTES)
    try:
        return load_or_create_key(path)
    except (OSError, ValueError) as e:
        raise key_refusal(path, e) from None


def token_key_path(config: Config) -> Path | None:
    """``token-key-file``, else ``token.key`` in the cache-dir, else None."""
    if config.token_key_file is not None:
        return config.token_key_file
    return None if config.cache_dir is None else config.cache_dir / KEY_FILE


def key_refusal(path: Path, error: OSError | ValueError) -> ConfigError:
    """The one line saying why the token key file cannot be used."""
    reason = getattr(error, "strerror", None) or str(error)
    return ConfigError(f"token-key-file: cannot use {str(path)!r}: {reason}")
