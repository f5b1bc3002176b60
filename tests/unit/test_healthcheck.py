"""The image's HEALTHCHECK script: which address it asks for /health.

Why: the script must find Docxy wherever it listens (the integration test
runs it in the real image for tcp: only); a wrong guess marks a healthy
container unhealthy, and the orchestrator restarts it forever.
"""

from __future__ import annotations

import http.client
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "image" / "healthcheck.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docxy_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load()


@pytest.mark.parametrize(
    ("endpoint", "kind", "host", "port"),
    [
        ("tcp:5000", http.client.HTTPConnection, "127.0.0.1", 5000),
        (
            "tcp:port=5001:interface=0.0.0.0",
            http.client.HTTPConnection,
            "127.0.0.1",
            5001,
        ),
        ("tcp:5002:interface=10.1.2.3", http.client.HTTPConnection, "10.1.2.3", 5002),
        (r"tcp6:5003:interface=\:\:", http.client.HTTPConnection, "::1", 5003),
        ("tcp6:5004", http.client.HTTPConnection, "::1", 5004),
        (
            "ssl:443:privateKey=/k.pem:certKey=/c.pem",
            http.client.HTTPSConnection,
            "127.0.0.1",
            443,
        ),
        (
            "acme:/var/lib/docxy/acme:tcp:8443:domains=a.example,b.example",
            http.client.HTTPSConnection,
            "127.0.0.1",
            8443,
        ),
    ],
)
def test_endpoint_to_connection(
    endpoint: str, kind: type[http.client.HTTPConnection], host: str, port: int
) -> None:
    conn = healthcheck.connection(endpoint)
    assert type(conn) is kind
    assert (conn.host, conn.port) == (host, port)


def test_unix_and_systemd() -> None:
    conn = healthcheck.connection("unix:/run/docxy/docxy.sock")
    assert isinstance(conn, healthcheck.UnixConnection)
    assert conn.path == "/run/docxy/docxy.sock"
    assert healthcheck.connection("unix:address=/x.sock").path == "/x.sock"
    assert healthcheck.connection("systemd:domain=INET:index=0") is None


def test_arguments_after_docxy_in_pid_1s_command_line() -> None:
    argv = ["/opt/docxy/bin/python3", "/opt/docxy/bin/twistd", "-n", "docxy"]
    cmdline = "\0".join([*argv, "--port", "tcp:1", ""]).encode()
    assert healthcheck.docxy_args(cmdline) == ["--port", "tcp:1"]
    assert healthcheck.docxy_args(b"/bin/sh\0") == []
