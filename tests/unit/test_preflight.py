"""What start checks of the files a configuration names (docxy.preflight),
and the report of ``--check-config`` (docxy.check_config): each finding,
the exit status, the line start would stop with, and nothing created."""

from __future__ import annotations

import datetime
import io
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from twisted.internet import reactor

from docxy import check_config, preflight
from docxy.cache.directory import CacheLock
from docxy.config import Config, ConfigError, build_config
from docxy.config_values import systemd_sockets_assumed
from docxy.credentials import Credentials
from docxy.tls.store import AcmeStore
from docxy.upstream_set import PRESETS
from tests.support.server_certs import self_signed, ssl_port, write_pair

HASH = "$2b$04$" + "a" * 53


def levels(findings: list[preflight.Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.text) for f in findings]


def only(findings: list[preflight.Finding]) -> preflight.Finding:
    assert len(findings) == 1, findings
    return findings[0]


def test_a_missing_cache_dir_is_created_at_start_not_by_the_check(
    tmp_path: Path,
) -> None:
    root = tmp_path / "a" / "cache"
    config = build_config({"cache-dir": str(root)})
    finding = only(preflight.cache_dir(config))
    assert finding.level == preflight.OK
    assert "is created at start" in finding.text
    assert not root.parent.exists()


def test_a_cache_dir_under_a_file_stops_start_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "cache"
    with pytest.raises(ConfigError, match=r"cache-dir: cannot use .*Not a directory"):
        build_config({"cache-dir": str(root)})
    finding = only(preflight.cache_dir(Config(cache_dir=root)))
    assert finding.level == preflight.ERROR
    assert finding.stop == f"docxy: configuration error: {finding.text}"


def test_htpasswd_counts_accounts_and_refuses_other_hashes(tmp_path: Path) -> None:
    good = tmp_path / "htpasswd"
    good.write_text(f"alice:{HASH}\nbob:{HASH}\n")
    assert levels(preflight.htpasswd(Config(htpasswd=good))) == [
        (preflight.OK, f"htpasswd: 2 account(s) in {str(good)!r}")
    ]
    bad = tmp_path / "md5"
    bad.write_text("alice:$apr1$xyz$abc\n")
    finding = only(preflight.htpasswd(Config(htpasswd=bad)))
    assert finding.level == preflight.ERROR
    assert "line 1" in finding.text and "$apr1$" not in finding.line


def test_token_key_file_created_at_start_valid_or_refused(tmp_path: Path) -> None:
    accounts = tmp_path / "htpasswd"
    accounts.write_text(f"alice:{HASH}\n")
    key = tmp_path / "token.key"
    with_key = Config(htpasswd=accounts, token_key_file=key)
    assert "is created at start" in only(preflight.token_key(with_key)).text
    assert not key.exists()
    key.write_text("not hex\n")
    finding = only(preflight.token_key(with_key))
    assert finding.level == preflight.ERROR
    assert finding.text.startswith(f"token-key-file: cannot use {str(key)!r}")
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o644)
    found = preflight.token_key(with_key)
    assert [f.level for f in found] == [preflight.OK, preflight.WARNING]
    assert "ab" * 8 not in "".join(f.line for f in found)  # the key is never shown
    nowhere = Config(htpasswd=accounts, token_key_file=tmp_path / "no" / "key")
    assert only(preflight.token_key(nowhere)).level == preflight.ERROR


def test_workers_without_a_token_key_file_or_cache_is_an_error() -> None:
    accounts = Path(__file__)  # only its path matters here
    one = Config(htpasswd=accounts, cache_dir=None, workers=1)
    assert only(preflight.token_key(one)).level == preflight.WARNING
    two = Config(htpasswd=accounts, cache_dir=None, workers=2)
    assert "needed with workers > 1" in only(preflight.token_key(two)).text


def test_upstream_ca_must_hold_a_certificate(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    finding = only(preflight.upstream_ca(Config(upstream_ca=bundle)))
    assert finding.text == f"upstream-ca: {str(bundle)!r} holds no PEM certificate"
    _, cert = write_pair(tmp_path, "ca.example")
    finding = only(preflight.upstream_ca(Config(upstream_ca=cert)))
    assert finding.level == preflight.OK and "1 certificate(s)" in finding.text


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "level", "says"),
    [
        (-1, 90.5, preflight.OK, "(90 days left)"),
        (-80, 5.5, preflight.WARNING, "(5 days left)"),
        (-90, -2, preflight.WARNING, "expired on"),
        (3, 90, preflight.WARNING, "is not valid before"),
    ],
)
def test_an_ssl_port_says_how_long_its_certificate_is_valid(
    tmp_path: Path, valid_from: float, valid_until: float, level: str, says: str
) -> None:
    key, cert = write_pair(tmp_path, "m.example", valid_until, valid_from)
    config = build_config({"port": [ssl_port(key, cert)], "no-cache": True})
    finding = only(list(preflight.certificates(config, reactor, now())))
    assert finding.level == level
    assert "certificate for m.example" in finding.text and says in finding.text


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    key, _ = write_pair(tmp_path, "a.example")
    _, cert = write_pair(tmp_path, "b.example")
    with pytest.raises(ConfigError, match="keys do not match"):
        build_config({"port": [ssl_port(key, cert)]})


def test_an_acme_port_reports_its_stored_certificate(tmp_path: Path) -> None:
    state = tmp_path / "acme"
    port = f"acme:{state}:tcp:0:domains=a.example,b.example"
    config = build_config({"port": [port], "no-cache": True, "workers": "1"})
    stored = AcmeStore(state, "https://acme-v02.api.letsencrypt.org/directory")
    stored.prepare()
    stored.save("a.example", self_signed("a.example", -1, 60.5))
    found = list(preflight.certificates(config, reactor, now()))
    assert [f.level for f in found] == [preflight.OK, preflight.OK]
    assert "stored certificate for a.example" in found[0].text
    assert "(60 days left)" in found[0].text
    assert "no certificate for b.example yet" in found[1].text


def test_start_stops_at_the_first_error_in_start_order(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("x")
    config = Config(cache_dir=tmp_path / "file" / "c", upstream_ca=bad_ca)
    with pytest.raises(ConfigError, match=r"^cache-dir: "):
        preflight.require(config, reactor)
    with pytest.raises(ConfigError, match=r"^upstream-ca: "):
        preflight.require(Config(upstream_ca=bad_ca), reactor)
    preflight.require(Config(cache_dir=tmp_path / "fine"), reactor)


def test_a_busy_port_is_a_warning_a_free_one_is_bound_only_for_the_check() -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    busy = f"tcp:{held.getsockname()[1]}:interface=127.0.0.1"
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    number = free.getsockname()[1]
    free.close()
    config = build_config({"port": [busy, f"tcp:{number}:interface=127.0.0.1"]})
    try:
        found = list(check_config.ports(config, reactor))
    finally:
        held.close()
    assert [f.level for f in found] == [preflight.WARNING, preflight.OK]
    assert "in use" in found[0].text and "Address already in use" in found[0].text
    again = socket.socket()
    again.bind(("127.0.0.1", number))  # the check let go of it
    again.close()


def test_a_port_on_an_address_of_no_interface_stops_start() -> None:
    config = build_config({"port": ["tcp:0:interface=192.0.2.1"]})
    finding = only(list(check_config.ports(config, reactor)))
    assert finding.level == preflight.ERROR
    assert finding.stop.startswith("docxy: cannot listen on tcp:0:interface=192.0.2.1")
    assert "no interface of this host has that address" in finding.stop


def test_a_cache_held_by_a_running_docxy_is_a_warning(tmp_path: Path) -> None:
    config = Config(cache_dir=tmp_path)
    assert check_config.cache_holder(config) == []
    lock = CacheLock.acquire(tmp_path)
    try:
        finding = only(check_config.cache_holder(config))
    finally:
        lock.release()
    assert finding.level == preflight.WARNING
    assert f"held by a running Docxy (pid {os.getpid()})" in finding.text


def test_the_report_never_shows_a_secret_and_exits_as_start_would(
    tmp_path: Path,
) -> None:
    hub = Credentials("bob", "s3cret-token", "token-file /run/secrets/hub")
    upstream = replace(PRESETS["docker.io"], credentials=hub)
    config = Config(upstreams=(upstream,), cache_dir=None)
    found = check_config.check(config, reactor, {"DOCXY_NO_CACHE": "1"}, None)
    out, err = io.StringIO(), io.StringIO()
    assert check_config.report(found, out, err) == 0
    assert "s3cret" not in out.getvalue()
    assert "account bob (token-file /run/secrets/hub)" in out.getvalue()
    assert "parsed from the command line over DOCXY_NO_CACHE" in out.getvalue()
    assert (
        out.getvalue()
        .splitlines()[-1]
        .startswith("docxy: configuration check: Docxy would start (0 errors")
    )
    assert err.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    status = check_config.refused(ConfigError("upstream: 'ftp://x' ..."), out, err)
    assert status == 2
    assert err.getvalue() == "docxy: configuration error: upstream: 'ftp://x' ...\n"
    assert "Docxy would not start (1 error, 0 warnings)" in out.getvalue()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.mark.parametrize(
    "port",
    [
        "systemd:domain=INET6:index=0",
        "acme:/tmp/acme:systemd:domain=INET6:index=0:domains=m.example",
    ],
)
def test_a_check_takes_a_systemd_socket_as_given_start_does_not(port: str) -> None:
    settings = {"port": [port], "public-url": "https://m.example", "no-cache": True}
    with pytest.raises(ConfigError, match="needs socket activation"):
        build_config(settings)
    with systemd_sockets_assumed():
        config = build_config(settings)
    with pytest.raises(ConfigError, match="needs socket activation"):
        build_config(settings)  # only within
    finding = only(list(check_config.ports(config, reactor)))
    assert finding.level == preflight.WARNING
    assert "not checked: its socket is systemd's to pass at start" in finding.text
    assert list(preflight.certificates(config, reactor, now())) == []
