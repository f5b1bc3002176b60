"""The real ``twistd docxy`` command line: help, bad configuration, TOML."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.docxy import TWISTD, run_docxy, twistd_env
from tests.support.processes import LOOPBACK, ManagedProcess, free_port, port_open

OPTIONS = [
    "--port",
    "--listen",
    "--public-url",
    "--upstream",
    "--upstream-ca",
    "--upstream-realm",
    "--upstream-service",
    "--library-prefix",
    "--connect-timeout",
    "--header-timeout",
    "--idle-timeout",
    "--client-header-timeout",
    "--max-connections",
    "--config",
    "--https-redirect",
    "--preset",
    "--default-upstream",
    "--cache-dir",
    "--cache-max-size",
    "--cache-auth-ttl",
    "--cache-freshness",
    "--no-cache",
    "--metrics-port",
    "--shutdown-timeout",
    "--log-format",
]


def test_help_documents_every_option(tmp_path: Path) -> None:
    result = run_docxy("--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in OPTIONS:
        assert f"{option}" in result.stdout, option


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--public-url", "https://mirror.example/path"], "must not have a path"),
        (["--upstream", "ftp://x"], "must start with http"),
        (["--port", "tcp:notaport"], "invalid endpoint"),
        (["--idle-timeout", "0"], "greater than 0"),
        (["--upstream-ca", "/nonexistent/ca.pem"], "not a readable file"),
        (["--config", "/nonexistent/docxy.toml"], "cannot read"),
        (["--port", "systemd:domain=INET:index=0"], "needs socket activation"),
        (["--upstream-realm", "http://127.0.0.1:1/token"], "clear text"),
        (["--metrics-port", "tcp:nope"], "invalid endpoint"),
        (["--log-format", "xml"], "expected text or json"),
        (["--shutdown-timeout", "-1"], "greater than 0"),
    ],
)
def test_bad_configuration_is_one_line_and_nothing_listens(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    port = free_port()
    result = run_docxy(
        "--port", f"tcp:{port}:interface={LOOPBACK}", *args, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("docxy: configuration error: ")
    assert reason in lines[0]
    assert not port_open(port)


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    config = tmp_path / "docxy.toml"
    config.write_text('upstrem = "https://quay.io"\n')
    result = run_docxy("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown setting 'upstrem'" in result.stderr


def test_settings_from_toml_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "docxy.toml"
    config.write_text(
        f'port = ["tcp:{port}:interface={LOOPBACK}"]\n'
        'public-url = "https://mirror.example"\n'
        f'upstream = "http://{LOOPBACK}:{free_port()}"\n'
        "no-cache = true\n"
    )
    process = ManagedProcess(
        [TWISTD, "-n", "--pidfile=", "docxy", "--config", str(config)],
        tmp_path / "docxy.log",
        env=twistd_env(),
        cwd=tmp_path,
    )
    try:
        process.wait_for_port(port)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health") as response:
            assert json.load(response)["status"] == "ok"
        process.wait_for_log("method=GET path=/health status=200")
        assert "token realm https://mirror.example/auth/token" in process.log_text()
    finally:
        assert process.stop() is not None


def test_a_second_docxy_on_the_same_cache_dir_stops_at_start(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    port = free_port()
    first = ManagedProcess(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "docxy",
            "--port",
            f"tcp:{port}:interface={LOOPBACK}",
            "--upstream",
            f"http://{LOOPBACK}:{free_port()}",
            "--cache-dir",
            str(cache),
        ],
        tmp_path / "first.log",
        env=twistd_env(),
        cwd=tmp_path,
    )
    try:
        first.wait_for_port(port)
        second_port = free_port()
        result = run_docxy(
            "--port",
            f"tcp:{second_port}:interface={LOOPBACK}",
            "--cache-dir",
            str(cache),
            cwd=tmp_path,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"docxy: configuration error: cache-dir: {str(cache)!r} is in use by "
            f"another Docxy (pid {first.pid}); give each its own --cache-dir"
        ]
        assert not port_open(second_port)
    finally:
        assert first.stop() is not None


def _one_line_listen_error(result: subprocess.CompletedProcess[str]) -> str:
    """The daemon stopped with one line naming the port; no traceback."""
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "docxy: cannot listen" in line]
    assert len(lines) == 1, output
    return lines[0]


def test_a_port_in_use_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        endpoint = f"tcp:{port}:interface={LOOPBACK}"
        result = run_docxy("--no-cache", "--port", endpoint, cwd=tmp_path)
    line = _one_line_listen_error(result)
    assert f"cannot listen on {endpoint}: Address already in use" in line


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_a_port_without_permission_stops_the_daemon_with_one_line(
    tmp_path: Path,
) -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start < 2:
        pytest.skip("every port is unprivileged on this host")
    endpoint = f"tcp:{start - 1}:interface={LOOPBACK}"
    tmp_path.chmod(0o777)
    result = run_docxy("--no-cache", "--port", endpoint, cwd=tmp_path, prefix=AS_NOBODY)
    line = _one_line_listen_error(result)
    assert f"cannot listen on {endpoint}: Permission denied" in line
