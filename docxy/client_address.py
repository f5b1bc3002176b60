"""Who a request comes from: the peer, or the client its trusted proxies name.

The allow-list and the per-client rate both key on this one address, so
it must never be guessed. Behind ``trusted-proxies`` the client is read
from ``X-Forwarded-For`` right to left, as nginx's realip module does with
``real_ip_recursive on``: every hop a trusted proxy appended is skipped, the
first one that is not a trusted proxy is the client. Hops left of it were
written by the client and are never read.

Where nginx and HAProxy keep the proxy's own address when a hop cannot be
read, Docxy refuses the request (``400``): the proxy is usually inside the
allowed networks, so "the proxy sent it" would let a request that names
nobody in, and put every such request in the proxy's rate bucket. A
trusted proxy's ``X-Forwarded-For`` must name a client; an RFC 7239
``Forwarded`` header is not read, so one sent without ``X-Forwarded-For``
is refused the same way rather than ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from twisted.web.server import Request

from .config_values import Network
from .errors import RegistryError, shown

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a hop may carry besides the address: a port (``192.0.2.1:8080``,
# ``[2001:db8::1]:8080``), as nginx accepts and some balancers send.
_PORT_RE = re.compile(r"[0-9]{1,5}")


def unreadable(header: str, value: str) -> RegistryError:
    """400 for a trusted proxy's header that names no client address."""
    return RegistryError(
        400,
        "DENIED",
        "this mirror cannot tell the client's address: its proxy sent a "
        f"{header} it cannot read",
        {"header": header, "value": shown(value)},
    )


def client_address(
    request: Request, trusted_proxies: Sequence[Network]
) -> Address | None:
    """The peer, or the first untrusted X-Forwarded-For hop behind trusted ones.

    Raises the 400 :func:`unreadable` when a trusted proxy's header names
    no address where one must be. None: the peer is no IP address (a unix
    socket), so no allow-list admits it.
    """
    peer = parse_address(getattr(request.getClientAddress(), "host", ""))
    if peer is None or not within(peer, trusted_proxies):
        return peer
    headers = request.requestHeaders
    values = headers.getRawHeaders(b"x-forwarded-for")
    if values is None:
        if headers.hasHeader(b"forwarded"):
            raise unreadable("Forwarded", "only X-Forwarded-For is read")
        return peer  # the proxy's own request (a health check)
    # Several header lines are one list, in order (RFC 9110 5.3); empty
    # list elements are ignored (RFC 9110 5.6.1).
    hops = [
        hop.strip(" \t")
        for value in values
        for hop in value.decode("latin-1").split(",")
    ]
    hops = [hop for hop in hops if hop]
    if not hops:
        raise unreadable("X-Forwarded-For", "")
    address = peer
    for hop in reversed(hops):
        parsed = parse_hop(hop)
        if parsed is None:
            raise unreadable("X-Forwarded-For", hop)
        address = parsed
        if not within(address, trusted_proxies):
            return address
    return address  # trusted all the way: the leftmost hop is the client


def parse_hop(text: str) -> Address | None:
    """One X-Forwarded-For hop: an address, with or without a port."""
    host = text
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or ":" not in host:
            return None  # brackets are for IPv6 only
        if rest and not (rest.startswith(":") and _is_port(rest[1:])):
            return None
    elif text.count(":") == 1:  # IPv4:port (a bare IPv6 has several colons)
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
    if "%" in host:
        return None  # a zone names an interface of the proxy's host
    return parse_address(host)


def parse_address(text: str) -> Address | None:
    """An address, IPv4-mapped IPv6 as the IPv4 it is; None if it is none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def within(address: Address | None, networks: Sequence[Network]) -> bool:
    if address is None:
        return False
    return any(address.version == n.version and address in n for n in networks)


def _is_port(text: str) -> bool:
    return _PORT_RE.fullmatch(text) is not None and int(text) <= 65535
