"""DOCXY_* environment variables: names, lists, precedence, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docxy.config import SETTINGS, ConfigError
from docxy.environment import VARIABLES, settings_from_env, variable
from docxy.tap import Options


def options(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str):
    for name in [n for n in os.environ if n.startswith("DOCXY_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    opts = Options()
    opts.parseOptions(list(argv))
    assert opts.config is not None
    return opts.config


def test_every_setting_but_the_tables_has_a_variable() -> None:
    assert variable("public-url") == "DOCXY_PUBLIC_URL"
    assert VARIABLES["DOCXY_CONFIG"] == "config"
    assert set(VARIABLES.values()) == {"config", *SETTINGS} - {"upstreams"}
    assert VARIABLES["DOCXY_LISTEN"] == "port"


def test_lists_split_on_spaces_and_names_on_commas() -> None:
    env = {
        "DOCXY_PORT": " tcp:5000  tcp:5001:interface=127.0.0.1 ",
        "DOCXY_PRESET": "ghcr.io, quay.io registry.k8s.io",
        "HOME": "/root",
    }
    assert settings_from_env(env) == {
        "port": ["tcp:5000", "tcp:5001:interface=127.0.0.1"],
        "preset": ["ghcr.io", "quay.io", "registry.k8s.io"],
    }


def test_command_line_over_environment_over_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "docxy.toml"
    toml.write_text(
        'public-url = "https://file.example"\nidle-timeout = 7\n'
        "max-connections = 3\nheader-timeout = 9\n"
    )
    env = {
        "DOCXY_CONFIG": str(toml),
        "DOCXY_PUBLIC_URL": "https://env.example",
        "DOCXY_IDLE_TIMEOUT": "8",
        "DOCXY_HTTPS_REDIRECT": "true",
        "DOCXY_PRESET": "ghcr.io",
    }
    config = options(monkeypatch, env, "--public-url", "https://cli.example")
    assert config.public_url == "https://cli.example"
    assert config.idle_timeout == 8.0  # env over file
    assert config.header_timeout == 9.0  # file over default
    assert config.max_connections == 3
    assert config.https_redirect is True
    assert {u.name for u in config.upstreams} == {"docker.io", "ghcr.io"}


def test_config_option_wins_over_docxy_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("max-connections = 5\n")
    env = {"DOCXY_CONFIG": str(tmp_path / "missing.toml")}
    config = options(monkeypatch, env, "--config", str(chosen))
    assert config.max_connections == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DOCXY_IDLE_TIMEOUT": "soon"}, "DOCXY_IDLE_TIMEOUT: expected a number"),
        (
            {"DOCXY_CAHCE_DIR": "/x"},
            r"DOCXY_CAHCE_DIR: unknown environment variable \(did you mean "
            r"DOCXY_CACHE_DIR\?\)",
        ),
        (
            {"DOCXY_LISTEN": "tcp:1", "DOCXY_PORT": "tcp:2"},
            "DOCXY_LISTEN: an alias of DOCXY_PORT",
        ),
        ({"DOCXY_UPSTREAMS": "x"}, "DOCXY_UPSTREAMS: unknown environment variable"),
        ({"DOCXY_PORT": "tcp:notaport"}, "DOCXY_PORT: invalid endpoint"),
        ({"DOCXY_CONFIG": ""}, "DOCXY_CONFIG: expected a file name"),
        (
            {"DOCXY_PORT": "tcp://10.0.0.1:5000"},
            "DOCXY_PORT: looks like a Kubernetes service link",
        ),
        (
            {"DOCXY_SERVICE_HOST": "10.0.0.1"},
            "enableServiceLinks: false",
        ),
    ],
)
def test_bad_variables_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_env(env)


def test_bad_variable_stops_twistd_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        options(monkeypatch, {"DOCXY_MAX_CONNECTIONS": "0"})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "docxy: configuration error: DOCXY_MAX_CONNECTIONS: must be at least 1, "
        "got '0'\n"
    )


def test_variables_of_docxys_other_commands_are_not_the_daemons() -> None:
    """cache.md documents DOCXY_PREFETCH_USER for docxy-prefetch; the same
    environment (a container's) must not stop the daemon."""
    from docxy.environment import OTHER_COMMANDS
    from docxy.prefetch.cli import USER_ENV

    assert USER_ENV in OTHER_COMMANDS
    env = {USER_ENV: "alice:secret", "DOCXY_IDLE_TIMEOUT": "30"}
    assert settings_from_env(env) == {"idle-timeout": "30"}
