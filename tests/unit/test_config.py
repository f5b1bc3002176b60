"""Configuration: defaults, TOML, precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import DOCKER_HUB, ConfigError, build_config, load_file
from docxy.upstream_set import PRESETS


def test_defaults_are_docker_hub_on_port_5000() -> None:
    config = build_config({})
    assert config.default.url == DOCKER_HUB
    assert config.default.name == "docker.io"
    assert config.default.library_prefix is True
    assert [u.name for u in config.upstreams] == ["docker.io"]
    assert config.ports == ("tcp:5000",)
    assert config.public_url == "http://127.0.0.1:5000"
    assert config.public_url_given is False
    assert config.ping_realm(config.default) == "http://127.0.0.1:5000/auth/token"
    assert config.token_realm(config.default) == (
        "http://127.0.0.1:5000/auth/docker.io/token"
    )


def test_upstream_changes_only_the_url_of_the_default_upstream() -> None:
    """``--upstream`` of a Hub mirror keeps the name (containerd's ?ns=docker.io)."""
    config = build_config({"upstream": "https://hub-mirror.example"})
    default = config.default
    assert (default.name, default.url) == ("docker.io", "https://hub-mirror.example")
    assert default.namespaces == PRESETS["docker.io"].namespaces
    assert default.library_prefix is True  # Docker Hub's naming, whatever the URL
    off = build_config(
        {"upstream": "https://hub-mirror.example", "library-prefix": "off"}
    )
    assert (off.default.name, off.default.library_prefix) == ("docker.io", False)


def test_default_upstream_names_another_for_upstream() -> None:
    config = build_config(
        {"upstream": "https://ghcr.mirror", "default-upstream": "ghcr.io"}
    )
    assert [u.name for u in config.upstreams] == ["ghcr.io"]
    assert (config.default.url, config.default.library_prefix) == (
        "https://ghcr.mirror",
        False,
    )
    internal = build_config({"upstream": "https://r.internal", "default-upstream": "r"})
    assert (internal.default.name, internal.default.namespaces) == ("r", ("r",))


def test_public_url_is_normalised() -> None:
    config = build_config({"public-url": "https://Mirror.example:8443/"})
    assert config.public_url == "https://Mirror.example:8443"
    assert config.public_url_given


def test_an_upstream_url_may_have_a_path_another_docxy_mount() -> None:
    """A node tier reaches a regional Docxy's ``/<alias>/v2/`` mount."""
    config = build_config(
        {
            "upstream": "http://regional:5000/",
            "upstreams": {"ghcr.io": {"url": "http://regional:5000/ghcr.io/"}},
        }
    )
    by_name = {u.name: u.url for u in config.upstreams}
    assert by_name == {
        "docker.io": "http://regional:5000",
        "ghcr.io": "http://regional:5000/ghcr.io",
    }


def test_default_public_url_follows_first_port() -> None:
    assert build_config({"port": ["tcp:8080:interface=127.0.0.1"]}).public_url == (
        "http://127.0.0.1:8080"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"public-url": "ftp://x"}, "must start with http"),
        ({"public-url": "https://x/prefix"}, "must not have a path"),
        ({"public-url": "https://x?a=b"}, "query"),
        ({"public-url": "https://u:p@x"}, "credentials"),
        ({"public-url": "https://"}, "no host"),
        ({"public-url": "https://x:99999"}, "invalid port"),
        ({"upstream": "registry-1.docker.io"}, "must start with http"),
        ({"idle-timeout": "0"}, "greater than 0"),
        ({"connect-timeout": "soon"}, "number of seconds"),
        ({"max-connections": "0"}, "at least 1"),
        ({"library-prefix": "maybe"}, "auto, on or off"),
        ({"port": ["nope:1"]}, "invalid endpoint"),
        ({"port": ["unix:/tmp/x.sock"]}, "public-url: required"),
        ({"upstream-ca": "/nonexistent.pem"}, "not a readable file"),
    ],
)
def test_invalid_settings(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config(settings)
    assert "\n" not in str(info.value)


def test_file_settings_and_command_line_precedence(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text(
        'port = ["tcp:6000"]\n'
        'public-url = "https://file.example"\n'
        'upstream = "https://quay.io"\n'
        "idle-timeout = 30\n"
    )
    config = build_config({"public-url": "https://cli.example"}, load_file(str(path)))
    assert config.public_url == "https://cli.example"
    assert config.default.url == "https://quay.io"
    assert config.ports == ("tcp:6000",)
    assert config.idle_timeout == 30.0


def test_unknown_file_setting(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text('upstrem = "https://x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'upstrem'"):
        load_file(str(path))


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text("port = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(str(path))


def test_https_redirect_needs_an_https_public_url() -> None:
    with pytest.raises(ConfigError, match="https-redirect"):
        build_config({"https-redirect": True, "public-url": "http://x"})
    config = build_config({"https-redirect": "true", "public-url": "https://x"})
    assert config.https_redirect is True


def test_presets_and_tables() -> None:
    config = build_config(
        {
            "preset": ["ghcr.io", "quay.io"],
            "upstreams": {"quay.io": {"url": "https://quay.mirror.internal"}},
        }
    )
    by_name = {u.name: u for u in config.upstreams}
    assert set(by_name) == {"docker.io", "ghcr.io", "quay.io"}
    assert by_name["ghcr.io"].url == "https://ghcr.io"
    assert by_name["quay.io"].url == "https://quay.mirror.internal"
    assert by_name["quay.io"].namespaces == ("quay.io",)
    assert config.default_upstream == "docker.io"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"preset": ["nope.io"]}, "unknown preset 'nope.io'"),
        ({"upstreams": {"x": {}}}, "url is required"),
        ({"upstreams": {"x": {"url": "https://x", "colour": 1}}}, "unknown key"),
        ({"upstreams": {"Bad_Name": {"url": "https://x"}}}, "a name is"),
        ({"upstreams": {"x": {"url": "https://x", "aliases": ["../y"]}}}, "alias"),
        (
            {
                "upstreams": {
                    "a": {"url": "https://a", "hosts": ["m.example"]},
                    "b": {"url": "https://b", "hosts": ["M.example."]},
                }
            },
            "claimed by both",
        ),
        ({"default-upstream": "missing"}, "not configured"),
    ],
)
def test_invalid_upstreams(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(settings)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1024", 1024),
        ("500M", 500 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1.5T", int(1.5 * 1024**4)),
        ("20GiB", 20 * 1024**3),
    ],
)
def test_cache_sizes(tmp_path: Path, value: str, size: int) -> None:
    config = build_config({"cache-dir": str(tmp_path), "cache-max-size": value})
    assert (config.cache_dir, config.cache_max_size) == (tmp_path, size)


@pytest.mark.parametrize("value", ["lots", "0", "-5G"])
def test_bad_cache_sizes(value: str) -> None:
    with pytest.raises(ConfigError, match="cache-max-size"):
        build_config({"cache-max-size": value})


@pytest.mark.parametrize(
    ("port", "url"),
    [
        (
            "acme:/var/lib/docxy:tcp:443:domains=a.example,b.example",
            "https://a.example",
        ),
        (
            "acme:/d:tcp:8443:interface=0.0.0.0:domains=m.example",
            "https://m.example:8443",
        ),
    ],
)
def test_default_public_url_of_an_acme_port(port: str, url: str) -> None:
    from docxy.config import default_public_url

    assert default_public_url((port,)) == url


def test_an_upstream_url_with_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as refused:
        build_config({"upstream": "https://bot:s3cret@registry.example"})
    assert str(refused.value) == (
        "upstream: 'https://***@registry.example' must not contain credentials"
    )
    with pytest.raises(ConfigError) as refused:
        build_config({"upstream": "ftp://ghp_token@registry.example"})
    assert "ghp_token" not in str(refused.value)
