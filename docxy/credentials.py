"""The mirror's own account at an upstream, and where it may be sent.

An operator gives Docxy an account per upstream (``username`` with a
``password-file`` or ``token-file``, or a Docker ``config.json``) so that
anonymous clients, cache fills and access probes pull with the account's
budget instead of the mirror's IP address. The secret is read from a file
at start (never from the command line), kept out of every ``repr`` and log,
and only ever sent to a realm :func:`realm_refusal` accepts: the bug class
of distribution's CVE-2026-33540 is a proxy that sends its configured
password to whatever realm an upstream's challenge names.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .config_values import ConfigError

# Hosts whose realm is another host of the same operator, known in advance.
KNOWN_REALM_HOSTS: dict[str, tuple[str, ...]] = {
    "registry-1.docker.io": ("auth.docker.io",),
}
# Keys a Docker config.json may file Docker Hub's entry under.
_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")


@dataclass(frozen=True)
class Credentials:
    """A username and its secret; the secret never appears in a repr."""

    username: str
    secret: str = field(repr=False)
    # Where the secret came from, for the start log ("password-file /x").
    source: str = ""

    def basic(self) -> bytes:
        pair = f"{self.username}:{self.secret}".encode()
        return b"Basic " + base64.b64encode(pair)


def read_secret(where: str, path: object) -> str:
    """The first line of a secret file (a trailing newline is not the secret)."""
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read {str(path)!r}: {reason}") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"{where}: {str(path)!r} is empty")
    return secret


def load_credentials(
    prefix: str,
    url: str,
    username: str | None,
    password_file: object | None,
    token_file: object | None,
    docker_config: object | None,
) -> Credentials | None:
    """The account configured for the upstream at ``url``, or None.

    ``prefix`` makes the setting names of the errors (``upstreams.ghcr.io.``
    for a table, ``upstream-`` for the default upstream's options); a
    missing or contradictory piece stops Docxy at start with one line.
    """
    given = {
        key: value
        for key, value in (
            ("username", username),
            ("password-file", password_file),
            ("token-file", token_file),
            ("docker-config", docker_config),
        )
        if value is not None
    }
    name = {
        key: prefix + key
        for key in ("username", "password-file", "token-file", "docker-config")
    }
    if docker_config is not None:
        if len(given) > 1:
            raise ConfigError(
                f"{name['docker-config']}: replaces {name['username']} and "
                f"{name['password-file']}/{name['token-file']}: set one way"
            )
        return _from_docker_config(name["docker-config"], url, docker_config)
    if password_file is not None and token_file is not None:
        raise ConfigError(
            f"{name['token-file']}: set {name['password-file']} or it, not both"
        )
    files = [k for k in ("password-file", "token-file") if k in given]
    if username is None:
        if files:
            raise ConfigError(f"{name[files[0]]}: needs {name['username']}")
        return None
    if not files:
        raise ConfigError(
            f"{name['username']}: needs {name['password-file']} or {name['token-file']}"
        )
    key = files[0]
    path = given[key]
    return Credentials(username, read_secret(name[key], path), f"{key} {path}")


def _from_docker_config(name: str, url: str, path: object) -> Credentials:
    try:
        document = json.loads(Path(str(path)).read_text(encoding="utf-8"))
        auths = document.get("auths", {})
    except (OSError, ValueError, AttributeError):
        raise ConfigError(
            f"{name}: {str(path)!r} is not a readable config.json"
        ) from None
    host = urlsplit(url).netloc
    keys = [host, f"https://{host}", f"http://{host}"]
    if host in KNOWN_REALM_HOSTS or host == "registry-1.docker.io":
        keys += list(_DOCKER_HUB_KEYS)
    entry = next(
        (auths[k] for k in keys if isinstance(auths, dict) and k in auths), None
    )
    if not isinstance(entry, dict):
        raise ConfigError(f"{name}: no auths entry for {host!r} in {str(path)!r}")
    if entry.get("identitytoken"):
        raise ConfigError(
            f"{name}: the {host!r} entry holds an identity token, which Docxy "
            "does not use: give username and password-file or token-file"
        )
    user, secret = entry.get("username"), entry.get("password")
    if entry.get("auth"):
        try:
            user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise ConfigError(
                f"{name}: the {host!r} entry's auth is not base64"
            ) from None
    if not (isinstance(user, str) and user and isinstance(secret, str) and secret):
        raise ConfigError(f"{name}: the {host!r} entry has no username and password")
    return Credentials(user, secret, f"docker-config {path}")


def realm_hosts(url: str, realm: str | None, listed: tuple[str, ...]) -> frozenset[str]:
    """Hosts allowed to receive an upstream's credentials: its own, the
    configured realm's, the ones listed for it, and known ones (Docker Hub)."""
    own = (urlsplit(url).hostname or "").lower()
    hosts = {own, *KNOWN_REALM_HOSTS.get(own, ()), *(h.lower() for h in listed)}
    if realm is not None:
        hosts.add((urlsplit(realm).hostname or "").lower())
    return frozenset(hosts)


def realm_refusal(url: str, allowed: frozenset[str], realm: str) -> str | None:
    """Why the realm ``realm`` must not receive the account of ``url``, or None."""
    parts = urlsplit(realm)
    plain_ok = urlsplit(url).scheme == "http"
    if parts.scheme != "https" and not (plain_ok and parts.scheme == "http"):
        return "it is not https"
    if "@" in parts.netloc:
        # urllib's host is the part after "@"; twisted.web's Agent would
        # take the whole netloc: never two readings of one realm.
        return "it carries user information"
    if (parts.hostname or "").lower() not in allowed:
        return "its host is neither the upstream's nor one listed in realm-hosts"
    return None
