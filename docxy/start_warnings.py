"""Warnings at start about a configuration that runs, but probably not as meant.

Invalid configuration stops Docxy (:class:`docxy.config.ConfigError`); these
are the valid ones an operator most likely did not intend, logged once by
the service when it starts.
"""

from __future__ import annotations

import ipaddress
import re

from .config import Config

# Endpoint kinds that speak TLS; every other kind (tcp, tcp6, unix, systemd)
# is a plain-HTTP listener.
_TLS_KINDS = frozenset({"ssl", "acme"})


def start_warnings(config: Config) -> list[str]:
    """One line per doubtful setting, in the order an operator would fix them."""
    warnings = []
    if not config.public_url_given:
        if config.ports[0].startswith("acme:"):
            warnings.append(
                f"public-url not set: using {config.public_url}, from the acme: "
                "port's first domain; set --public-url if clients use another URL"
            )
        else:
            warnings.append(
                f"public-url not set: using {config.public_url}, which only "
                "clients on this host can reach; set --public-url for others"
            )
    http01 = any("challenge=http-01" in port for port in config.ports)
    plain = [p for p in config.ports if p.partition(":")[0] not in _TLS_KINDS]
    if http01 and not plain:
        warnings.append(
            "acme: challenge=http-01 but no plain-HTTP port: the CA's requests "
            "to port 80 will not reach Docxy and no certificate will be issued; "
            "add --port tcp:80 (or use challenge=tls-alpn-01)"
        )
    if not (config.htpasswd or config.allow or config.anonymous):
        exposed = [p for p in config.ports if not _loopback_only(p)]
        if exposed:
            warnings.append(
                f"open relay: {exposed[0]} is not a loopback listener and "
                "neither htpasswd nor allow is set: anyone who reaches it can "
                "pull through this mirror (and spend its upstream budget and "
                "account); set allow or htpasswd, or anonymous = true to say "
                "this is meant"
            )
    return warnings


def _loopback_only(port: str) -> bool:
    """Whether an endpoint string listens on loopback (or no network) only."""
    kind = port.partition(":")[0]
    if kind in ("unix",):
        return True
    found = re.search(r"(?:^|:)interface=((?:\\.|[^:])*)", port)
    if found is None:
        return False
    address = found.group(1).replace("\\", "")
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"
