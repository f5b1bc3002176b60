"""The image's HEALTHCHECK: GET /health on the first port Docxy listens on.

Docxy may be configured by its command line, DOCXY_* variables or a TOML
file, so the port is found the way Docxy itself finds it: the options of
PID 1 (``twistd ... docxy ARGS``) parsed with Docxy's own ``Options``, in
the same environment. Exit 0 when Docxy answers 200, 1 otherwise.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import sys
from pathlib import Path

from docxy.tap import Options

TIMEOUT = 5.0


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (a ``unix:`` port)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def docxy_args(cmdline: bytes) -> list[str]:
    """The arguments after ``docxy`` in twistd's command line."""
    argv = [a.decode() for a in cmdline.split(b"\0") if a]
    return argv[argv.index("docxy") + 1 :] if "docxy" in argv else []


def connection(endpoint: str) -> http.client.HTTPConnection | None:
    """A connection to a server endpoint string; None for one it cannot reach.

    tcp:, tcp6:, ssl:, acme: (https on its tcp port) and unix:; a
    ``systemd:`` socket is not named in the string.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    kind = parts[0]
    args = [p for p in parts[1:] if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "unix":
        return UnixConnection(kwargs.get("address") or args[0])
    if kind == "acme":  # acme:DIRECTORY:tcp:PORT:...
        kind, args = "ssl", args[2:]
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    port = int(kwargs.get("port") or args[0])
    loopback = "::1" if kind == "tcp6" else "127.0.0.1"
    host = kwargs.get("interface") or loopback
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if kind == "ssl":
        # Liveness over loopback: the certificate is not what is checked.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def main() -> int:
    options = Options()
    options.parseOptions(docxy_args(Path("/proc/1/cmdline").read_bytes()))
    assert options.config is not None
    endpoint = options.config.ports[0]
    conn = connection(endpoint)
    if conn is None:
        print(f"healthcheck: cannot reach {endpoint!r}; assuming healthy")
        return 0
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except OSError as e:
        print(f"healthcheck: {endpoint}: {e}")
        return 1
    finally:
        conn.close()
    print(f"healthcheck: {endpoint}: /health answered {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
