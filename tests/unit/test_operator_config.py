"""Configuration an operator copies from the docs (issue 14): the listen
alias in TOML, a nearest-name hint, binary units, a plain-http realm, a
systemd: port without socket activation, and the warnings at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import ConfigError, build_config, load_file
from docxy.start_warnings import start_warnings


def toml(tmp_path: Path, text: str) -> dict[str, object]:
    path = tmp_path / "docxy.toml"
    path.write_text(text)
    return load_file(str(path))


def test_listen_in_toml_is_port(tmp_path: Path) -> None:
    config = build_config({}, toml(tmp_path, 'listen = ["tcp:6001", "tcp:6002"]\n'))
    assert config.ports == ("tcp:6001", "tcp:6002")
    config = build_config({}, toml(tmp_path, 'listen = "tcp:6003"\n'))
    assert config.ports == ("tcp:6003",)


def test_listen_and_port_in_one_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listen: an alias of port"):
        toml(tmp_path, 'listen = "tcp:1"\nport = "tcp:2"\n')


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('public_url = "https://m.example"\n', "did you mean 'public-url'?"),
        ("cache-max-szie = 1\n", "did you mean 'cache-max-size'?"),
        ('listn = "tcp:1"\n', "did you mean 'listen'?"),
        ('[upstreams.x]\nurl = "https://x"\nalias = 1\n', "mean 'aliases'?"),
    ],
)
def test_unknown_key_names_the_nearest_right_one(
    tmp_path: Path, text: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, toml(tmp_path, text))
    assert hint in str(info.value)


def test_unknown_key_without_a_near_name_gets_no_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        toml(tmp_path, "colour = 1\n")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [("20Gi", 20 * 1024**3), ("20 GiB", 20 * 1024**3), ("512Mi", 512 * 1024**2)],
)
def test_binary_unit_suffixes(tmp_path: Path, value: str, size: int) -> None:
    config = build_config({"cache-dir": str(tmp_path), "cache-max-size": value})
    assert config.cache_max_size == size


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"upstream-realm": "http://auth.example/token"}, "upstream-realm"),
        (
            {"upstreams": {"x": {"url": "https://x", "realm": "http://x/token"}}},
            "upstreams.x.realm",
        ),
    ],
)
def test_plain_http_realm_of_an_https_upstream_is_refused(
    settings: dict[str, object], where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(settings)
    message = str(info.value)
    assert message.startswith(f"{where}: ") and "clear text" in message
    assert "\n" not in message


def test_plain_http_realm_of_a_plain_http_upstream_is_allowed() -> None:
    config = build_config(
        {"upstream": "http://127.0.0.1:5001", "upstream-realm": "http://127.0.0.1:1/t"}
    )
    assert config.default.realm == "http://127.0.0.1:1/t"
    config = build_config({"upstream-realm": "https://auth.example/token"})
    assert config.default.realm == "https://auth.example/token"


@pytest.mark.parametrize(
    "port",
    [
        "systemd:domain=INET:index=0",
        "systemd:domain=INET:name=docxy",
        "acme:{tmp}/acme:systemd:domain=INET6:index=0:domains=m.example",
    ],
)
def test_systemd_port_without_socket_activation(
    port: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Bare or wrapped in acme:, the same one line (no "list index")."""
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    port = port.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as info:
        build_config({"port": [port], "public-url": "https://m.example"})
    assert "needs socket activation" in str(info.value)
    assert "list index" not in str(info.value)
    assert "\n" not in str(info.value)


def doubts(settings: dict[str, object]) -> list[str]:
    """The start warnings but the open-relay one (its own tests are below)."""
    warnings = start_warnings(build_config(settings))
    return [w for w in warnings if not w.startswith("open relay")]


def test_warning_for_a_defaulted_loopback_public_url() -> None:
    (warning,) = doubts({})
    assert "http://127.0.0.1:5000" in warning and "only clients on this host" in warning
    assert doubts({"public-url": "https://m.example"}) == []


def test_warning_for_a_defaulted_acme_public_url_does_not_call_it_local(
    tmp_path: Path,
) -> None:
    port = f"acme:{tmp_path}:tcp:0:domains=docker.example.com"
    (warning,) = doubts({"port": [port]})
    assert "https://docker.example.com" in warning and "first domain" in warning
    assert "this host" not in warning


def test_http01_without_a_plain_listener_warns(tmp_path: Path) -> None:
    acme = f"acme:{tmp_path}:tcp:0:domains=m.example:challenge=http-01"
    public = {"public-url": "https://m.example"}
    (warning,) = doubts({"port": [acme], **public})
    assert "challenge=http-01" in warning and "tcp:80" in warning
    assert doubts({"port": [acme, "tcp:0"], **public}) == []
    alpn = f"acme:{tmp_path}:tcp:0:domains=m.example"
    assert doubts({"port": [alpn], **public}) == []


@pytest.mark.parametrize(
    ("port", "settings", "warned"),
    [
        ("tcp:5000", {}, True),
        ("tcp6:5000:interface=\\:\\:", {"public-url": "http://m"}, True),
        ("tcp:5000:interface=10.0.0.5", {}, True),
        ("tcp:5000:interface=127.0.0.1", {}, False),
        ("tcp6:5000:interface=\\:\\:1", {"public-url": "http://m"}, False),
        ("unix:/run/docxy.sock", {"public-url": "http://127.0.0.1"}, False),
        ("tcp:5000", {"allow": "10.0.0.0/8"}, False),
        ("tcp:5000", {"anonymous": True}, False),
    ],
)
def test_a_non_loopback_listener_without_access_control_is_an_open_relay(
    port: str, settings: dict[str, object], warned: bool
) -> None:
    config = build_config({"port": [port], **settings})
    relay = [w for w in start_warnings(config) if w.startswith("open relay")]
    assert bool(relay) == warned, start_warnings(config)
