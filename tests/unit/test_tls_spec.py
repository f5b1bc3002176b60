"""The ``acme:`` endpoint string: options, escaping, one-line errors.

Why: Docxy's config parses every --port at start; a bad acme string must
fail there with a reason an operator can act on, and parsing must have no
side effects (it runs twice).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import endpoints, reactor

from docxy.tls.endpoint import AcmeEndpoint
from docxy.tls.spec import (
    LETSENCRYPT,
    LETSENCRYPT_STAGING,
    AcmeSpecError,
    escape,
    parse_acme,
)


def test_full_string_through_serverfromstring(tmp_path: Path) -> None:
    """The plugin is found by prefix; every option lands where it belongs."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    state = tmp_path / "acme"
    endpoint = endpoints.serverFromString(
        reactor,
        f"acme:{state}:tcp:8443:interface=127.0.0.1:domains=A.example,b.example."
        r":email=ops@example.com:directory=https\://127.0.0.1\:14000/dir"
        f":caBundle={ca}:challenge=http-01:retry=2.5",
    )
    assert isinstance(endpoint, AcmeEndpoint)
    spec = endpoint.spec
    assert spec.state_dir == state
    assert spec.domains == ("a.example", "b.example")
    assert spec.email == "ops@example.com"
    assert spec.directory == "https://127.0.0.1:14000/dir"
    assert spec.ca_bundle == ca
    assert spec.challenge == "http-01"
    assert spec.retry == 2.5
    assert not state.exists(), "parsing must not create the state directory"
    assert isinstance(endpoint.wrapped, endpoints.TCP4ServerEndpoint)
    assert endpoint.wrapped._port == 8443
    assert endpoint.wrapped._interface == "127.0.0.1"


def test_defaults_and_shortcuts(tmp_path: Path) -> None:
    spec, sub = parse_acme([str(tmp_path), "tcp", "443"], {"domains": "x.example"})
    assert (spec.directory, spec.challenge, spec.email) == (
        LETSENCRYPT,
        "tls-alpn-01",
        None,
    )
    assert sub == "tcp:443"
    spec, _ = parse_acme(
        [str(tmp_path), "tcp", "443"],
        {"domains": "x.example", "directory": "letsencrypt-staging"},
    )
    assert spec.directory == LETSENCRYPT_STAGING


def test_sub_endpoint_keeps_escapes(tmp_path: Path) -> None:
    """Values the wrapped endpoint gets are re-escaped, so they survive."""
    _, sub = parse_acme(
        [str(tmp_path), "unix", "/run/a:b.sock"],
        {"domains": "x.example", "mode": "660"},
    )
    assert sub == r"unix:/run/a\:b.sock:mode=660"
    assert escape("a=b:c\\") == "a\\=b\\:c\\\\"


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (":tcp:443", "domains= is required"),
        (":domains=x.example", "needs an endpoint"),
        (":ssl:443:domains=x.example", "wraps a plain endpoint"),
        (":tcp:443:domains=*.example.com", "wildcard"),
        (":tcp:443:domains=10.0.0.1", "IP addresses"),
        (":tcp:443:domains=a..b", "not a valid DNS name"),
        (":tcp:443:domains=-a.example", "not a valid DNS name"),
        (":tcp:443:domains=bücher.example", "punycode"),
        (":tcp:443:domains=x.example:challenge=dns-01", "challenge: expected"),
        (":tcp:443:domains=x.example:directory=http\\://ca/dir", "https://"),
        (":tcp:443:domains=x.example:caBundle=/nonexistent.pem", "caBundle: cannot"),
        (":tcp:443:domains=x.example:email=nobody", "email:"),
        (":tcp:443:domains=x.example:retry=0", "retry:"),
        (":tcp:443:domains=x.example:domain=y", "went to the wrapped endpoint"),
        (":tcp:notaport:domains=x.example", "wrapped endpoint"),
    ],
)
def test_bad_strings(tmp_path: Path, tail: str, reason: str) -> None:
    with pytest.raises(AcmeSpecError, match=reason) as info:
        endpoints.serverFromString(reactor, f"acme:{tmp_path}{tail}")
    assert "\n" not in str(info.value)


def test_state_dir_must_be_absolute_with_a_parent(tmp_path: Path) -> None:
    with pytest.raises(AcmeSpecError, match="absolute"):
        parse_acme(["relative/dir", "tcp", "443"], {"domains": "x.example"})
    with pytest.raises(AcmeSpecError, match="parent"):
        parse_acme([str(tmp_path / "a" / "b"), "tcp", "443"], {"domains": "x.example"})
    (tmp_path / "file").write_text("")
    with pytest.raises(AcmeSpecError, match="not a directory"):
        parse_acme([str(tmp_path / "file"), "tcp", "443"], {"domains": "x.example"})


def test_config_reports_a_bad_acme_port_in_one_line(tmp_path: Path) -> None:
    from docxy.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="wildcard") as info:
        build_config(
            {"port": [f"acme:{tmp_path}:tcp:443:domains=*.x.example"]},
        )
    assert str(info.value).startswith("port: invalid endpoint")
