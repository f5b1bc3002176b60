"""The real ``twistd docxy --check-config``: exit 0 if Docxy would start,
else 2 with the very line the start prints; a live configuration's busy
port and held cache are warnings; nothing is created or left listening."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import bcrypt
import pytest

from tests.support.docxy import TWISTD, run_docxy, twistd_env
from tests.support.processes import LOOPBACK, ManagedProcess, free_port, port_open
from tests.support.server_certs import ssl_port, write_pair

SUMMARY = "docxy: configuration check: "


def check(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_docxy("--check-config", *args, cwd=cwd, env=env)


def loopback(port: int) -> str:
    return f"tcp:{port}:interface={LOOPBACK}"


def findings(result: subprocess.CompletedProcess[str], level: str) -> list[str]:
    prefix = f"{level}: "
    return [
        line.removeprefix(prefix)
        for line in result.stdout.splitlines()
        if line.startswith(prefix)
    ]


def start(args: list[str], directory: Path) -> ManagedProcess:
    """The daemon itself, with the configuration a check was given."""
    return ManagedProcess(
        [TWISTD, "-n", "--pidfile=", "docxy", *args],
        directory / "docxy.log",
        env=twistd_env(),
        cwd=directory,
    )


def htpasswd(directory: Path) -> Path:
    path = directory / "htpasswd"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"alice:{hashed}\n")
    return path


def test_a_good_configuration_exits_0_and_creates_nothing(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, "mirror.example", valid_until=60.5)
    tls, plain = free_port(), free_port()
    password = tmp_path / "hub-password"
    password.write_text("hunter2-not-to-be-shown\n")
    config = tmp_path / "docxy.toml"
    cache = tmp_path / "cache"
    config.write_text(
        f'port = ["{ssl_port(key, cert, tls)}", "{loopback(plain)}"]\n'
        f'cache-dir = "{cache}"\n'
        f'htpasswd = "{htpasswd(tmp_path)}"\n'
        f'upstream = "http://{LOOPBACK}:{free_port()}"\n'
        'upstream-username = "mirrorbot"\n'
        f'upstream-password-file = "{password}"\n'
    )
    result = check(
        "--config",
        str(config),
        cwd=tmp_path,
        env={"DOCXY_PUBLIC_URL": "https://mirror.example", "DOCXY_WORKERS": "2"},
    )
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert findings(result, "error") == []
    assert findings(result, "warning") == []
    ok = "\n".join(findings(result, "ok"))
    assert "DOCXY_PUBLIC_URL, DOCXY_WORKERS over the file" in ok
    assert "public-url: https://mirror.example" in ok
    assert f"account mirrorbot (password-file {password})" in ok
    assert "htpasswd: 1 account(s)" in ok
    assert f"cache-dir: {str(cache)!r} is created at start" in ok
    assert "workers: 2 processes" in ok
    assert "certificate for mirror.example is valid until" in ok
    assert "(60 days left)" in ok
    assert f"port {loopback(plain)}: free" in ok
    assert result.stdout.splitlines()[-1] == (
        f"{SUMMARY}Docxy would start (0 errors, 0 warnings)"
    )
    assert "hunter2" not in result.stdout + result.stderr
    assert not cache.exists()  # nor its token key: nothing is created
    assert not port_open(tls) and not port_open(plain)


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["--upstream", "ftp://registry.example"], {}, "must start with http"),
        ([], {"DOCXY_UPSTREAM": "https://user:pw@registry.example"}, "***@regi"),
        (["--htpasswd", "/nonexistent/htpasswd"], {}, "not a readable file"),
        (
            ["--port", "unix:/tmp/docxy-check-never.sock", "--workers", "2"],
            {},
            "cannot be shared by worker processes",
        ),
    ],
)
def test_a_bad_setting_exits_2_with_the_line_start_prints(
    tmp_path: Path, args: list[str], env: dict[str, str], reason: str
) -> None:
    port = free_port()
    common = ["--port", loopback(port), "--no-cache", *args]
    result = check(*common, cwd=tmp_path, env=env)
    started = run_docxy(*common, cwd=tmp_path, env=env)
    assert (result.returncode, started.returncode) == (2, 2)
    assert result.stderr == started.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("docxy: configuration error: ") and reason in line
    assert "pw@" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"{SUMMARY}Docxy would not start (1 error, 0 warnings)"
    )
    assert not port_open(port)


def test_a_key_that_is_not_the_certificates_exits_2(tmp_path: Path) -> None:
    key, _ = write_pair(tmp_path, "a.example")
    _, cert = write_pair(tmp_path, "b.example")
    port = free_port()
    result = check("--port", ssl_port(key, cert, port), "--no-cache", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("docxy: configuration error: port: invalid endpoint")
    assert "Certificate public and private keys do not match." in line


def test_a_bad_htpasswd_stops_check_and_workers_start_alike(tmp_path: Path) -> None:
    """Found by the checks start runs before it serves (docxy.preflight):
    a supervisor used to start its workers with it, each of which failed."""
    accounts = tmp_path / "htpasswd"
    accounts.write_text("alice:{SHA}notbcrypt\n")
    port = free_port()
    args = ["--port", loopback(port), "--no-cache", "--htpasswd", str(accounts)]
    args += ["--token-key-file", str(tmp_path / "token.key"), "--workers", "2"]
    result = check(*args, cwd=tmp_path)
    started = run_docxy(*args, cwd=tmp_path)
    assert (result.returncode, started.returncode) == (2, 2)
    assert result.stderr == started.stderr
    assert "is not user:bcrypt-hash" in result.stderr
    assert "notbcrypt" not in result.stdout + result.stderr
    assert not (tmp_path / "token.key").exists()
    assert not port_open(port)


def test_an_expired_certificate_is_a_warning_with_its_date(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, "old.example", valid_until=-3, valid_from=-90)
    result = check(
        "--port",
        ssl_port(key, cert, free_port()),
        "--no-cache",
        "--public-url",
        "https://old.example",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result
    (expired,) = [w for w in findings(result, "warning") if "certificate" in w]
    assert "certificate for old.example expired on" in expired
    assert "clients refuse it" in expired


def test_a_systemd_port_is_a_warning_outside_the_unit(tmp_path: Path) -> None:
    """The shipped socket-activation settings, checked by hand: start stops
    without systemd's socket, the check says it could not check it."""
    args = ["--port", "systemd:domain=INET6:index=0", "--no-cache"]
    args += ["--public-url", "http://mirror.example:5000", "--workers", "1"]
    result = check(*args, cwd=tmp_path)
    assert result.returncode == 0, result
    (warning,) = [w for w in findings(result, "warning") if w.startswith("port ")]
    assert "not checked: its socket is systemd's to pass at start" in warning
    assert run_docxy(*args, cwd=tmp_path).returncode == 2


def test_a_port_no_interface_has_exits_2(tmp_path: Path) -> None:
    port = "tcp:5000:interface=192.0.2.1"  # TEST-NET-1: on no interface here
    result = check("--port", port, "--no-cache", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"docxy: cannot listen on {port}: Cannot assign requested address "
        "(no interface of this host has that address)\n"
    )


def test_the_live_configuration_of_a_running_docxy_exits_0_with_warnings(
    tmp_path: Path,
) -> None:
    """Its port is busy and its cache held: the normal case of a check."""
    port, cache = free_port(), tmp_path / "cache"
    args = ["--port", loopback(port), "--cache-dir", str(cache)]
    args += ["--upstream", f"http://{LOOPBACK}:{free_port()}", "--workers", "1"]
    running = start(args, tmp_path)
    try:
        running.wait_for_port(port)
        with socket.create_connection((LOOPBACK, port)):
            pass
        result = check(*args, cwd=tmp_path)
        assert running.alive()
    finally:
        assert running.stop() is not None
    assert result.returncode == 0, result
    assert findings(result, "error") == []
    warnings = findings(result, "warning")
    (busy,) = [w for w in warnings if w.startswith(f"port {loopback(port)}: ")]
    assert busy.startswith(f"port {loopback(port)}: in use (Address already in use")
    (held,) = [w for w in warnings if w.startswith("cache-dir: ")]
    assert held.startswith(f"cache-dir: {str(cache)!r} is held by a running Docxy")
    assert f"(pid {running.pid})" in held
    assert result.stdout.splitlines()[-1].startswith(f"{SUMMARY}Docxy would start")
    assert (cache / "lock").read_text() == f"{running.pid}\n"  # not the check's


def test_start_logs_the_certificate_warning_the_check_prints(tmp_path: Path) -> None:
    key, cert = write_pair(tmp_path, "soon.example", valid_until=3.5)
    port = free_port()
    args = ["--port", ssl_port(key, cert, port), "--no-cache", "--workers", "1"]
    warning = "certificate for soon.example is valid until"
    result = check(*args, cwd=tmp_path)
    assert result.returncode == 0, result
    (line,) = [w for w in findings(result, "warning") if warning in w]
    assert line.endswith("(3 days left)")
    running = start(args, tmp_path)
    try:
        running.wait_for_port(port)
        running.wait_for_log(line)
    finally:
        assert running.stop() is not None
