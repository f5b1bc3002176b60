"""Token-realm discovery against a scripted upstream, in memory.

Docxy's own ``UpstreamClient`` on treq's ``RequestTraversalAgent`` and a
``task.Clock`` (tests/support/memory.py): the single discovery for many
callers, the header timeout and the refused realms need no real upstream.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.web.server import Request

from docxy.realm import OPEN_TTL, NoTokenServiceError, RealmDirectory, TokenRealm
from docxy.upstream_client import UpstreamClient, UpstreamError, UpstreamTimeoutError
from tests.support.memory import Held, MemoryNet, Scripted, result

TIMEOUT = 20.0


def challenge(realm: str) -> bytes:
    return f'Bearer realm="{realm}",service="svc"'.encode()


def directory(net: MemoryNet, upstream: str = "http://up.test") -> RealmDirectory:
    client = UpstreamClient(net.clock, net.agent, header_timeout=TIMEOUT)
    return RealmDirectory(client, upstream)


def get(realms: RealmDirectory, net: MemoryNet) -> defer.Deferred[TokenRealm]:
    d = defer.ensureDeferred(realms.get())
    net.pump()
    return d


def test_many_callers_share_one_discovery_and_its_result() -> None:
    held = Held()
    upstream = Scripted({"/v2/": held})
    net = MemoryNet(upstream)
    realms = directory(net)
    first, second = get(realms, net), get(realms, net)
    assert len(held.waiting) == 1

    request = held.waiting.pop()
    request.setResponseCode(401)
    request.setHeader(b"www-authenticate", challenge("https://auth.test/token"))
    request.finish()
    net.pump()

    wanted = TokenRealm("https://auth.test/token", "svc")
    assert result(first) == result(second) == wanted
    assert result(get(realms, net)) == wanted  # remembered: no new request
    assert upstream.paths() == ["/v2/"]


def test_a_silent_upstream_fails_discovery_at_the_header_timeout() -> None:
    held = Held()
    net = MemoryNet(Scripted({"/v2/": held}))
    realms = directory(net)
    waiting = get(realms, net)
    net.advance(TIMEOUT - 0.5)
    assert not waiting.called
    net.advance(0.5)
    with pytest.raises(UpstreamTimeoutError):
        result(waiting)
    assert held.lost, "the silent request was not cancelled"
    get(realms, net)  # a failure is not remembered: the next caller asks again
    assert len(held.waiting) == 1


def unacceptable(request: Request) -> bytes:
    request.setResponseCode(401)
    request.setHeader(b"www-authenticate", challenge("http://auth.test/token"))
    return b"{}"


def test_a_plain_http_realm_of_an_https_upstream_is_refused() -> None:
    net = MemoryNet(Scripted({"/v2/": unacceptable}))
    realms = directory(net, "https://up.test")
    with pytest.raises(UpstreamError, match="unacceptable token realm"):
        result(get(realms, net))
    assert realms.known is None


def test_a_plain_http_realm_of_a_plain_http_upstream_is_used() -> None:
    net = MemoryNet(Scripted({"/v2/": unacceptable}))
    realm = result(get(directory(net), net))
    assert realm == TokenRealm("http://auth.test/token", "svc")


def test_an_open_upstream_is_remembered_for_a_while() -> None:
    """No token service: token requests and access checks of a plain
    registry do not each cost a ``GET /v2/``."""
    upstream = Scripted({"/v2/": lambda request: b"{}"})
    net = MemoryNet(upstream)
    realms = directory(net)
    for _ in range(3):
        with pytest.raises(NoTokenServiceError):
            result(get(realms, net))
    assert upstream.paths() == ["/v2/"]
    net.advance(OPEN_TTL)
    with pytest.raises(NoTokenServiceError):
        result(get(realms, net))
    assert upstream.paths() == ["/v2/", "/v2/"]
