"""The AccessGate's address rules: IPv4 and IPv6 blocks, trusted proxies."""

from __future__ import annotations

from typing import cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from docxy.access_control import AccessGate
from docxy.config_values import ConfigError, networks


def request_from(
    host: str,
    forwarded: str | list[str] | None = None,
    header: bytes = b"x-forwarded-for",
) -> Request:
    request = DummyRequest([b"v2", b""])
    kind = IPv6Address if ":" in host else IPv4Address
    request.client = kind("TCP", host, 40000)
    request.notes = {}  # type: ignore[attr-defined]
    if forwarded is not None:
        lines = [forwarded] if isinstance(forwarded, str) else forwarded
        request.requestHeaders.setRawHeaders(header, [v.encode() for v in lines])
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
        ("203.0.113.9", "10.1.1.1", "203.0.113.9"),  # not a trusted proxy
        ("203.0.113.9", "garbage", "203.0.113.9"),  # ... whatever it sends
        ("10.0.0.2", "192.0.2.43:47011", "192.0.2.43"),  # a port, as nginx reads
        ("10.0.0.2", "[2001:db8::1]:4711", "2001:db8::1"),
        ("10.0.0.2", "[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.2", "::ffff:203.0.113.5", "203.0.113.5"),
        # Left of the client is what the client wrote: never read.
        ("10.0.0.2", "junk, 203.0.113.5", "203.0.113.5"),
        ("10.0.0.2", "203.0.113.5, , 10.0.0.3,", "203.0.113.5"),  # empty elements
        ("10.0.0.2", ["198.51.100.1", "203.0.113.5"], "203.0.113.5"),  # two lines
        ("10.0.0.2", "10.0.0.7, 10.0.0.3", "10.0.0.7"),  # trusted all the way
        ("10.0.0.2", None, "10.0.0.2"),  # the proxy's own request
    ],
)
def test_x_forwarded_for_from_trusted_proxies_only(
    peer: str, forwarded: str | list[str] | None, client: str
) -> None:
    gate = AccessGate(trusted_proxies=networks("trusted-proxies", "10.0.0.0/24"))
    assert str(gate.client_address(request_from(peer, forwarded))) == client


PROXY = networks("trusted-proxies", "10.0.0.2")
BEHIND_PROXY = networks("allow", ["10.0.0.0/8"])  # the proxy's network too


@pytest.mark.parametrize(
    "forwarded",
    [
        "garbage",
        "unknown",  # what Squid sends with forwarded_for off
        "",
        " , ,",
        "203.0.113.5, garbage",  # the proxy's own hop is the unreadable one
        "garbage, 10.0.0.2",  # ... or the one behind a trusted hop
        ["203.0.113.5", "garbage"],  # two header lines, the last one junk
        "192.0.2.1:99999",
        "192.0.2.1:",
        "[2001:db8::1",
        "[2001:db8::1]80",
        "[192.0.2.1]:80",  # brackets are for IPv6
        "fe80::1%eth0",
        "192.0.2.1 198.51.100.2",
        "2001:db8::1:80:443:1:2:3",  # nine groups: not an address
        "x" * 5000,  # echoed in the detail only in part
    ],
)
def test_an_unreadable_hop_from_a_trusted_proxy_is_refused_not_the_proxys(
    forwarded: str | list[str],
) -> None:
    # On main such a request counted as the proxy's, 10.0.0.2, inside
    # allow: an address nobody named got in (and into the proxy's bucket).
    gate = AccessGate(BEHIND_PROXY, PROXY)
    error = gate.admit(request_from("10.0.0.2", forwarded), registry=True)
    assert error is not None
    assert (error.status, error.code) == (400, "DENIED")
    assert isinstance(error.detail, dict)
    assert error.detail["header"] == "X-Forwarded-For"
    assert len(error.detail["value"]) <= 100


def test_forwarded_without_x_forwarded_for_is_refused_not_ignored() -> None:
    gate = AccessGate(BEHIND_PROXY, PROXY)
    request = request_from("10.0.0.2", "for=192.0.2.60", header=b"forwarded")
    error = gate.admit(request, registry=True)
    assert error is not None and (error.status, error.detail) == (
        400,
        {"header": "Forwarded", "value": "only X-Forwarded-For is read"},
    )
    # Next to X-Forwarded-For it is not read; from others neither matters.
    request = request_from("10.0.0.2", "203.0.113.5")
    request.requestHeaders.setRawHeaders(b"forwarded", [b"for=10.9.9.9"])
    assert str(gate.client_address(request)) == "203.0.113.5"
    other = request_from("203.0.113.9", "for=10.9.9.9", header=b"forwarded")
    assert str(gate.client_address(other)) == "203.0.113.9"


def test_the_rate_is_per_forwarded_client_not_per_proxy() -> None:
    from twisted.internet.task import Clock

    from docxy.client_rate import ClientRate

    gate = AccessGate(
        trusted_proxies=PROXY,
        rate=ClientRate(Clock(), rate=1.0, burst=1),
    )
    # One client, whatever port its proxy names: one bucket.
    assert gate.admit(request_from("10.0.0.2", "192.0.2.5:1111"), True) is None
    second = gate.admit(request_from("10.0.0.2", "192.0.2.5:2222"), True)
    assert second is not None and second.status == 429
    # Another client behind the same proxy has its own.
    assert gate.admit(request_from("10.0.0.2", "192.0.2.6"), True) is None
    # An unreadable header costs no bucket: it is refused before the rate.
    refused = gate.admit(request_from("10.0.0.2", "garbage"), True)
    assert refused is not None and refused.status == 400


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
