"""The mirror's upstream account: read from files, never shown, bound to realms."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from docxy.config import ConfigError, build_config
from docxy.credentials import realm_hosts, realm_refusal

SECRET = "hunter2-not-in-any-repr"


def secret_file(tmp_path: Path, text: str = SECRET + "\n") -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    return path


def test_account_of_the_default_upstream_from_files(tmp_path: Path) -> None:
    config = build_config(
        {
            "upstream-username": "alice",
            "upstream-password-file": str(secret_file(tmp_path)),
        }
    )
    account = config.default.credentials
    assert account is not None
    assert (account.username, account.secret) == ("alice", SECRET)
    assert SECRET not in repr(config) and SECRET not in repr(account)
    assert account.basic() == b"Basic " + base64.b64encode(f"alice:{SECRET}".encode())


def test_account_in_an_upstream_table_with_a_token_file(tmp_path: Path) -> None:
    config = build_config(
        {
            "upstreams": {
                "ghcr.io": {"username": "bot", "token-file": str(secret_file(tmp_path))}
            },
            "preset": ["ghcr.io"],
        }
    )
    ghcr = next(u for u in config.upstreams if u.name == "ghcr.io")
    assert ghcr.credentials is not None and ghcr.credentials.secret == SECRET
    assert config.default.credentials is None


def test_account_from_a_docker_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    path.write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    )
    config = build_config({"upstream-docker-config": str(path)})
    assert config.default.credentials is not None
    assert config.default.credentials.username == "alice"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"upstream-username": "alice"},
            "upstream-username: needs upstream-password-file or",
        ),
        (
            {"upstream-password-file": "PATH"},
            "upstream-password-file: needs upstream-username",
        ),
        (
            {
                "upstream-username": "a",
                "upstream-password-file": "PATH",
                "upstream-token-file": "PATH",
            },
            "not both",
        ),
        (
            {"upstream-username": "a", "upstream-password-file": "/nonexistent"},
            "cannot read",
        ),
    ],
)
def test_incomplete_accounts_stop_at_start(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    path = str(secret_file(tmp_path))
    settings = {k: path if v == "PATH" else v for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message) as caught:
        build_config(settings)
    assert SECRET not in str(caught.value)


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        build_config(
            {
                "upstream-username": "a",
                "upstream-password-file": str(secret_file(tmp_path, "\n")),
            }
        )


def test_realms_that_may_receive_the_account() -> None:
    hub = "https://registry-1.docker.io"
    allowed = realm_hosts(hub, None, ())
    assert realm_refusal(hub, allowed, "https://auth.docker.io/token") is None
    assert realm_refusal(hub, allowed, "https://registry-1.docker.io/t") is None
    assert "https" in str(realm_refusal(hub, allowed, "http://auth.docker.io/token"))
    assert "host" in str(realm_refusal(hub, allowed, "https://evil.example/token"))
    assert "host" in str(
        realm_refusal(hub, allowed, "https://auth.docker.io.evil.example/token")
    )
    plain = "http://registry.internal:5000"
    listed = realm_hosts(plain, "https://sso.internal/t", ("auth.internal",))
    assert realm_refusal(plain, listed, "http://registry.internal:9000/t") is None
    assert realm_refusal(plain, listed, "https://sso.internal/other") is None
    assert realm_refusal(plain, listed, "http://auth.internal/t") is None
    assert realm_refusal(plain, listed, "http://other.internal/t") is not None


def test_a_realm_with_user_information_never_gets_the_account() -> None:
    # urllib reads the host after the "@", twisted.web's Agent the whole
    # netloc: one URL must not be two hosts to the check and the sender.
    hub = "https://registry-1.docker.io"
    allowed = realm_hosts(hub, None, ())
    for realm in (
        "https://evil.example@auth.docker.io/token",
        "https://evil.example:443@auth.docker.io/token",
    ):
        assert "user" in str(realm_refusal(hub, allowed, realm))


def test_an_incomplete_table_account_names_its_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(
            {"upstreams": {"ghcr.io": {"username": "bot"}}, "preset": ["ghcr.io"]}
        )
    assert str(caught.value).startswith(
        "upstreams.ghcr.io.username: needs upstreams.ghcr.io.password-file"
    )
