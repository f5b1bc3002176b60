"""The AccessGate a configuration asks for, with its accounts and token key."""

from __future__ import annotations

import secrets
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
    """The key Docxy's tokens are signed with (its file created if missing)."""
    path = config.token_key_file
    if path is None and config.cache_dir is not None:
        path = config.cache_dir / KEY_FILE
    if path is None:
        log.warn(
            "token-key-file not set and no cache-dir: Docxy's tokens are signed "
            "with a key of this process only (they end with it, and replicas "
            "do not accept each other's)"
        )
        return secrets.token_bytes(KEY_BYTES)
    try:
        return load_or_create_key(path)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(
            f"token-key-file: cannot use {str(path)!r}: {reason}"
        ) from None
