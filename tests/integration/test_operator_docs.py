"""The operator's manual against the daemon (issue 14): the option table of
docs/configuration.md against ``twistd docxy --help`` and the TOML keys,
every documented docxy.toml through the real loader, the shipped systemd
units through systemd itself."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest
from twisted.internet import endpoints
from twisted.python.systemd import ListenFDs

from docxy.config import SETTINGS, build_config, load_file
from docxy.environment import VARIABLES, variable
from tests.support.certs_d import certs_d_entry
from tests.support.docxy import REPO, TWISTD, Docxy, twistd_env
from tests.support.processes import LOOPBACK, ManagedProcess, free_port
from tests.support.registry import Upstream, make_test_ca
from tests.support.skopeo import run_skopeo

CONFIGURATION = REPO / "docs" / "configuration.md"
SYSTEMD = REPO / "deploy" / "systemd"
# Names the TOML loader accepts besides SETTINGS.
TOML_ALIASES = {"listen"}
# twistd adds these to every plugin's options.
TWISTD_OWN = {"help"}


def help_options() -> dict[str, str]:
    """``--name`` -> its help text, from the real ``twistd docxy --help``."""
    result = subprocess.run(
        [TWISTD, "docxy", "--help"],
        capture_output=True,
        text=True,
        env={**twistd_env(), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    options: dict[str, str] = {}
    name = None
    for line in result.stdout.splitlines():
        # An option starts near the margin; its text wraps far to the right
        # (and may itself mention --another-option).
        match = re.match(r" {1,8}(?:-\w, )?--([a-z0-9-]+)=?\s*(.*)", line)
        if match:
            name, text = match[1], match[2]
            options[name] = text
        elif name and line.startswith(" " * 10):
            options[name] += " " + line.strip()
        else:
            name = None
    return {k: v for k, v in options.items() if k not in TWISTD_OWN}


def documented_options() -> dict[str, tuple[str, str]]:
    """name -> (set with, default) from the Options table."""
    text = CONFIGURATION.read_text()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        name = re.match(r"`([a-z0-9-]+)`", cells[0])
        assert name, line
        rows[name[1]] = (cells[1], cells[2])
    return rows


def test_option_table_is_every_option_of_help_and_toml() -> None:
    documented = documented_options()
    assert {where for where, _ in documented.values()} <= {
        "both",
        "command line",
        "file",
    }, documented
    on_command_line = {
        name for name, (where, _) in documented.items() if where != "file"
    }
    in_file = {
        name for name, (where, _) in documented.items() if where != "command line"
    }
    in_help = set(help_options())
    assert on_command_line == in_help, (
        f"documented, not in --help: {sorted(on_command_line - in_help)}; "
        f"in --help, not documented: {sorted(in_help - on_command_line)}"
    )
    toml_keys = set(SETTINGS) | TOML_ALIASES
    assert in_file == toml_keys, (
        f"documented, not a TOML key: {sorted(in_file - toml_keys)}; "
        f"a TOML key, not documented: {sorted(toml_keys - in_file)}"
    )


def test_every_file_option_but_the_tables_has_its_environment_variable() -> None:
    """configuration.md: each name a file accepts is also ``DOCXY_<NAME>``
    (the ``[upstreams]`` tables excepted), and ``--config`` is DOCXY_CONFIG."""
    in_file = {
        n for n, (where, _) in documented_options().items() if where != "command line"
    }
    expected = {variable(name) for name in in_file - {"upstreams"} | {"config"}}
    assert set(VARIABLES) == expected, set(VARIABLES) ^ expected


def test_documented_defaults_agree_with_help() -> None:
    """Each one-word ``[default: X]`` of --help is the table's default."""
    documented = documented_options()
    checked = 0
    for name, text in help_options().items():
        match = re.search(r"\[default: ([^\]]+)\]", text)
        if match is None or " " in match[1]:
            continue  # none, or prose ("the smaller of ...")
        assert f"`{match[1]}`" in documented[name][1], (name, match[1])
        checked += 1
    assert checked >= 8  # the parse found the defaults at all


def documented_files() -> list[tuple[str, str]]:
    """Every ```toml block of the docs that is a docxy.toml, and the shipped one."""
    found = []
    for doc in sorted([*REPO.glob("docs/*.md"), REPO / "README.md"]):
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S):
            text = "\n".join(line.strip() for line in block.splitlines())
            if text.startswith("# /etc/docxy/docxy.toml"):
                found.append((doc.name, text))
    found.append(("deploy/systemd/docxy.toml", (SYSTEMD / "docxy.toml").read_text()))
    return found


def test_docs_show_docxy_files() -> None:
    names = [name for name, _ in documented_files()]
    # configuration.md (2), tls.md (acme: in TOML, the worked example),
    # running.md (socket activation), the shipped file.
    assert len(names) >= 6, names
    assert any("acme:" in text for _, text in documented_files())


@pytest.mark.parametrize(
    ("where", "text"), documented_files(), ids=lambda v: str(v).split("\n")[0][:40]
)
def test_documented_file_loads(
    where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copied as it is, with only the machine's directories moved to tmp."""
    for directory in ("/var/lib/docxy", "/var/cache/docxy"):
        text = text.replace(directory, f"{tmp_path}{directory}")
    (tmp_path / "var/lib/docxy").mkdir(parents=True)
    # systemd: ports parse only with an inherited socket, as under systemd.
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([3]))
    path = tmp_path / "docxy.toml"
    path.write_text(text)
    config = build_config({}, load_file(str(path)))
    assert config.ports


def docxy_examples() -> list[tuple[str, str]]:
    """Every ```toml block of docs/ with a Docxy setting in it (excerpts
    included; containerd's and containers' files have none)."""
    keys = set(SETTINGS) | TOML_ALIASES
    found = []
    for doc in sorted(REPO.glob("docs/*.md")):
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S):
            text = "\n".join(line.strip() for line in block.splitlines())
            if set(tomllib.loads(text)) & keys:
                found.append((doc.name, text))
    return found


@pytest.mark.parametrize(
    ("where", "text"), docxy_examples(), ids=lambda v: str(v).split("\n")[0][:40]
)
def test_every_docxy_example_names_only_real_settings(
    where: str, text: str, tmp_path: Path
) -> None:
    """Excerpts too: valid TOML whose every key Docxy's loader accepts."""
    path = tmp_path / "docxy.toml"
    path.write_text(text)
    assert load_file(str(path))


def test_socket_activation_serves_on_the_inherited_socket(tmp_path: Path) -> None:
    """The shipped socket unit's way in: systemd passes a listening socket."""
    port = free_port()
    argv = [
        "systemd-socket-activate",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--setenv=PYTHONPATH",  # it passes no other variable on
        # systemd always names its sockets (LISTEN_FDNAMES), and Twisted
        # adopts none without names.
        "--fdname=docxy.socket",
        TWISTD,
        "-n",
        "--pidfile=",
        "docxy",
        "--port",
        "systemd:domain=INET:index=0",
        "--public-url",
        f"http://{LOOPBACK}:{port}",
        "--no-cache",
    ]
    docxy = ManagedProcess(argv, tmp_path / "docxy.log", env=twistd_env())
    try:
        docxy.wait_for_log("Listening on", timeout=30)  # systemd-socket-activate
        with urllib.request.urlopen(
            f"http://{LOOPBACK}:{port}/health", timeout=30
        ) as r:
            assert r.status == 200
        docxy.wait_for_log("path=/health status=200")
        assert "configuration error" not in docxy.log_text()
    finally:
        docxy.stop()


def test_shipped_units_are_valid_systemd_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the units, ExecStart pointed at this
    tree's twistd (the only line that names this machine's paths)."""
    unit = (SYSTEMD / "docxy.service").read_text()
    assert "ExecStart=/opt/docxy/.venv/bin/twistd -n --pidfile= docxy" in unit
    (tmp_path / "docxy.service").write_text(
        unit.replace("/opt/docxy/.venv/bin/twistd", TWISTD)
    )
    shutil.copy(SYSTEMD / "docxy.socket", tmp_path / "docxy.socket")
    result = subprocess.run(
        ["systemd-analyze", "verify", "docxy.socket", "docxy.service"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def readme_run_command() -> list[str]:
    """The arguments the README's run command gives twistd."""
    readme = (REPO / "README.md").read_text()
    run = readme.split("\n## Run it\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = re.findall(r"```sh\n(.*?)\n```", run, re.S)
    assert len(commands) == 1, "the README's rule: one command to run"
    return commands[0].split(".venv/bin/twistd ", 1)[1].split()


def test_readme_run_command_leaves_no_pid_file_and_listens_on_loopback(
    tmp_path: Path,
) -> None:
    """The README's command as it is, on a free port instead of 5000 and
    with a cache of its own (the default one belongs to the machine)."""
    args = readme_run_command()
    assert args[:3] == ["-n", "--pidfile=", "docxy"], args
    assert "tcp:5000:interface=127.0.0.1" in args, args
    port = free_port()
    args = [a.replace("tcp:5000:", f"tcp:{port}:") for a in args]
    argv = [TWISTD, *args, "--cache-dir", str(tmp_path / "cache")]
    docxy = ManagedProcess(argv, tmp_path / "docxy.log", twistd_env(), tmp_path)
    try:
        docxy.wait_for_port(port)
        log = docxy.log_text()
        assert f"http://127.0.0.1:{port}" in log  # the realm it tells clients
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        docxy.stop()
    assert not (tmp_path / "twistd.pid").exists()
    assert list(tmp_path.glob("*.pid")) == []


def listening_addresses(port: int) -> list[str]:
    """The IPv4 addresses listening on ``port``, from /proc/net/tcp."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="writes /etc/containers/certs.d")
def test_private_ca_in_containers_certs_d_is_what_skopeo_trusts(
    upstream: Upstream, tmp_path: Path
) -> None:
    """An https Docxy with a private CA: skopeo (containers/image, as podman
    and CRI-O) refuses it until the CA is where clients.md puts it."""
    ca, cert, key = make_test_ca(tmp_path / "pki")
    tls = free_port()
    hostport = f"localhost:{tls}"
    docxy = Docxy(
        upstream.url,
        tmp_path / "docxy.log",
        [
            "--port",
            f"ssl:{tls}:interface={LOOPBACK}:privateKey={key}:certKey={cert}",
            "--public-url",
            f"https://{hostport}",
        ],
    )
    inspect = ["inspect", "--raw", f"docker://{hostport}/alpine:3.20"]
    try:
        docxy.wait_for_port(tls)
        refused = run_skopeo(inspect, tmp_path, check=False)
        assert refused.returncode != 0
        assert "certificate signed by unknown authority" in refused.stderr
        with certs_d_entry(Path("/etc/containers/certs.d"), hostport, ca):
            trusted = run_skopeo(inspect, tmp_path)
        assert trusted.stdout.strip()
        assert "/alpine/manifests/3.20 status=200" in docxy.log_text()
    finally:
        docxy.stop()


def clients_cri_snippet() -> str:
    text = (REPO / "docs" / "clients.md").read_text()
    blocks: list[str] = re.findall(r"```toml\n(.*?)```", text, re.S)
    (snippet,) = [b for b in blocks if "io.containerd.grpc.v1.cri" in b]
    return snippet


def cri_config_path(config: str, tmp_path: Path) -> str:
    """The CRI registry config_path real containerd reads from ``config``."""
    path = tmp_path / "config.toml"
    path.write_text(config)
    dump = subprocess.run(
        ["containerd", "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    section = dump.split('[plugins."io.containerd.grpc.v1.cri".registry]', 1)[1]
    match = re.search(r'config_path = "(.*)"', section)
    assert match, section[:500]
    return match[1]


def test_clients_cri_snippet_is_what_containerd_reads(tmp_path: Path) -> None:
    """clients.md's CRI config_path, and why it must keep ``version = 2``:
    containerd 1.6/1.7 ignore the section in a version 1 file."""
    snippet = clients_cri_snippet()
    assert snippet.startswith("version = 2\n")
    assert cri_config_path(snippet, tmp_path) == "/etc/containerd/certs.d"
    without = snippet.removeprefix("version = 2\n")
    assert cri_config_path(without, tmp_path) == ""


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(
        r"^#+ (.*)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M
    )
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings
    }


def test_every_link_between_the_docs_arrives() -> None:
    """Relative links (and their #anchors) in README, docs/ and benchmarks/
    name a file and a heading that exist: a reader never hits a dead end."""
    files = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    files += sorted(REPO.glob("docs/*.md"))
    dead = []
    for doc in files:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                dead.append(f"{doc.name}: {target} (no such file)")
            elif anchor and anchor not in heading_anchors(dest.read_text()):
                dead.append(f"{doc.name}: {target} (no such heading)")
    assert dead == []
