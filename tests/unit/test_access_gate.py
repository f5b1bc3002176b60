"""The AccessGate's address rules: IPv4 and IPv6 blocks, trusted proxies."""

from __future__ import annotations

from typing import cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from docxy.access_control import AccessGate
from docxy.config_values import ConfigError, networks


def request_from(host: str, forwarded: str | None = None) -> Request:
    request = DummyRequest([b"v2", b""])
    kind = IPv6Address if ":" in host else IPv4Address
    request.client = kind("TCP", host, 40000)
    request.notes = {}  # type: ignore[attr-defined]
    if forwarded is not None:
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [forwarded.encode()])
    return cast(Request, request)


ALLOW = networks("allow", ["10.0.0.0/8", "fd00::/8", "192.0.2.7"])


@pytest.mark.parametrize(
    ("host", "admitted"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("fd12::1", True),
        ("fe80::1", False),
        ("::ffff:10.9.9.9", True),  # an IPv4 client on a dual-stack socket
        ("192.0.2.7", True),
        ("192.0.2.8", False),
    ],
)
def test_allow_list_of_ipv4_and_ipv6_blocks(host: str, admitted: bool) -> None:
    error = AccessGate(ALLOW).admit(request_from(host), registry=True)
    assert (error is None) == admitted
    if error is not None:
        assert (error.status, error.code) == (403, "DENIED")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.2", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.2", "198.51.100.1, 203.0.113.5, 10.0.0.3", "203.0.113.5"),
        ("10.0.0.2", "garbage", "10.0.0.2"),
        ("203.0.113.9", "10.1.1.1", "203.0.113.9"),  # not a trusted proxy
    ],
)
def test_x_forwarded_for_from_trusted_proxies_only(
    peer: str, forwarded: str, client: str
) -> None:
    gate = AccessGate(trusted_proxies=networks("trusted-proxies", "10.0.0.0/24"))
    assert str(gate.client_address(request_from(peer, forwarded))) == client


def test_bad_blocks_stop_at_start() -> None:
    with pytest.raises(ConfigError, match="not an address or CIDR block"):
        networks("allow", ["10.0.0.0/33"])
    assert len(networks("allow", "10.0.0.0/8, fd00::/8")) == 2


def test_an_ipv6_client_has_one_rate_bucket_per_64() -> None:
    # Anyone with IPv6 has a /64 of addresses at least (as Docker Hub
    # counts): one bucket per address would let one client rotate past
    # client-rate, and push every other client's bucket out of the table.
    from twisted.internet.task import Clock

    from docxy.client_rate import ClientRate

    gate = AccessGate(rate=ClientRate(Clock(), rate=1.0, burst=2))
    first = [gate.admit(request_from(f"2001:db8:1:2::{n}"), True) for n in (1, 2)]
    assert first == [None, None]
    third = gate.admit(request_from("2001:db8:1:2:ffff::3"), registry=True)
    assert third is not None and third.status == 429
    assert gate.admit(request_from("2001:db8:1:3::1"), registry=True) is None
    assert gate.admit(request_from("10.0.0.1"), registry=True) is None
    assert gate.admit(request_from("10.0.0.2"), registry=True) is None


def test_anonymous_token_holders_are_rated_by_address_not_as_one_account() -> None:
    # anonymous = true next to htpasswd: Docxy's tokens for anonymous
    # clients all name "anonymous"; one greedy client must not spend the
    # bucket of every other anonymous client.
    from twisted.internet.task import Clock

    from docxy.client_rate import ClientRate
    from docxy.client_tokens import TokenSigner

    clock = Clock()
    signer = TokenSigner(b"k" * 32, clock, 300)
    gate = AccessGate(signer=signer, rate=ClientRate(clock, rate=1.0, burst=1))

    def with_token(host: str, subject: str) -> Request:
        request = request_from(host)
        token = signer.issue(subject, {("docker.io", "app")})
        request.requestHeaders.setRawHeaders(
            b"authorization", [b"Bearer " + token.encode()]
        )
        return request

    assert gate.admit(with_token("10.0.0.1", "anonymous"), registry=True) is None
    assert gate.admit(with_token("10.0.0.2", "anonymous"), registry=True) is None
    assert gate.admit(with_token("10.0.0.1", "anonymous"), registry=True) is not None
    # An account's bucket is the account's, from wherever it comes.
    assert gate.admit(with_token("10.0.0.3", "alice"), registry=True) is None
    assert gate.admit(with_token("10.0.0.4", "alice"), registry=True) is not None
