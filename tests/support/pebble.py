"""Debian's ``pebble`` (a test ACME server) on loopback, stopped by PID.

Why: Docxy's ACME endpoint must be shown against a real RFC 8555 server
that really validates HTTP-01 and TLS-ALPN-01 against Docxy's listeners.
Pebble's HTTPS API needs a certificate Debian does not ship, so each
instance gets a throwaway CA; its issuing root is new on every start and
is fetched from the management API.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from pathlib import Path

from .processes import LOOPBACK, ManagedProcess, free_port, port_open, wait_until
from .registry import make_test_ca

PEBBLE = "/usr/bin/pebble"


class Pebble(ManagedProcess):
    """One pebble; ``http_port``/``tls_port`` are where its validator connects."""

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        tls_port: int,
        validity: int | None = None,
        always_valid: bool = False,
        port: int | None = None,
        mgmt_port: int | None = None,
        wait: bool = True,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port or free_port()
        self.mgmt_port = mgmt_port or free_port()
        pki = workdir / "api-pki"
        if (pki / "ca.crt").exists():  # made beforehand: a client may need it first
            self.api_ca, cert, key = (
                pki / "ca.crt",
                pki / "server.crt",
                pki / "server.key",
            )
        else:
            self.api_ca, cert, key = make_test_ca(pki)
        config: dict[str, object] = {
            "listenAddress": f"{LOOPBACK}:{self.port}",
            "managementListenAddress": f"{LOOPBACK}:{self.mgmt_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            config["certificateValidityPeriod"] = validity
        config_path = workdir / "pebble-config.json"
        config_path.write_text(json.dumps({"pebble": config}))
        env = {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            # Every order validates for real (the default reuses half of them).
            "PEBBLE_AUTHZREUSE": "0",
        }
        if always_valid:
            env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        self.directory = f"https://{LOOPBACK}:{self.port}/dir"
        super().__init__(
            [PEBBLE, "-config", str(config_path)],
            workdir / "pebble.log",
            env=env,
            cwd=workdir,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        self.wait_for_port(self.port)
        wait_until(lambda: port_open(self.mgmt_port), 30, "pebble management API")

    @property
    def directory_option(self) -> str:
        """The directory URL escaped for an endpoint string."""
        return self.directory.replace(":", "\\:")

    def _get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        url = f"https://{LOOPBACK}:{self.mgmt_port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def root_pem(self) -> bytes:
        """The root that signs this run's certificates."""
        return self._get("/roots/0")

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root_pem())
        return path

    def new_orders(self) -> int:
        """newOrder requests pebble has answered so far (from its log)."""
        return len(re.findall(r"POST /order-plz", self.log_text()))
