"""DocxyChannel against hostile clients, in memory (issue 8, item 5).

A real DocxySite and channel over a StringTransport with a fake clock: what
the client sees (status, envelope, when the connection closes) and what
reached a Resource (nothing, for every refusal).
"""

from __future__ import annotations

import json
import resource as resource_module

import pytest
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from docxy import channel as channel_module
from docxy.capacity import RESERVE, client_capacity
from docxy.channel import LINGER_IDLE, LINGER_TOTAL, MAX_HEADERS, DocxyChannel
from docxy.site import DocxySite
from docxy.tokens import MAX_TOKEN_FORM

HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0


class Recorder(Resource):
    """Records what reached the Resource tree; answers 200 "ok"."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        self.seen.append((request.method, request.path, body))
        return b"ok"


@implementer(ITCPTransport)
class TCPTransport(StringTransport):  # type: ignore[misc]
    """A StringTransport that can half-close, like a TCP connection."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Client:
    def __init__(self, reactor: MemoryReactorClock, site: DocxySite) -> None:
        self.reactor = reactor
        channel = site.buildProtocol(None)
        assert isinstance(channel, DocxyChannel)
        self.channel = channel
        self.transport = TCPTransport()
        channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def received(self) -> bytes:
        value: bytes = self.transport.value()
        return value

    @property
    def closed(self) -> bool:
        """The client was told the connection ends (closed, or half-closed)."""
        t = self.transport
        return bool(t.disconnecting or t.write_closed or t.disconnected)

    def status(self) -> int:
        line = self.received.split(b"\r\n", 1)[0]
        return int(line.split(b" ")[1])

    def envelope(self) -> dict[str, object]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in head
        assert b"Connection: close" in head
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
        error: dict[str, object] = json.loads(body)["errors"][0]
        assert set(error) == {"code", "message", "detail"}
        return error


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def resource() -> Recorder:
    return Recorder()


@pytest.fixture
def site(reactor: MemoryReactorClock, resource: Recorder) -> DocxySite:
    site = DocxySite(resource, timeout=IDLE_TIMEOUT, reactor=reactor)
    site.header_timeout = HEADER_TIMEOUT
    return site


@pytest.fixture
def client(reactor: MemoryReactorClock, site: DocxySite) -> Client:
    return Client(reactor, site)


def test_a_plain_get_is_served(client: Client, resource: Recorder) -> None:
    client.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    assert client.status() == 200
    assert resource.seen == [(b"GET", b"/v2/", b"")]
    assert not client.closed


BIG = b"Content-Length: 209715200\r\n"  # 200 MiB
OVER_CAP = b"Content-Length: %d\r\n" % (MAX_TOKEN_FORM + 1)


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"GET /v2/x/blobs/a HTTP/1.1\r\nContent-Length: 9\r\n", 413, "SIZE_INVALID"),
        (b"HEAD /v2/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", 413, "SIZE_INVALID"),
        (b"PUT /v2/x/blobs/uploads/1 HTTP/1.1\r\n" + BIG, 405, "UNSUPPORTED"),
        (b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\n" + BIG, 405, "UNSUPPORTED"),
        (b"POST /auth/token HTTP/1.1\r\n" + BIG, 413, "SIZE_INVALID"),
        (b"POST /auth/x/token HTTP/1.1\r\n" + OVER_CAP, 413, "SIZE_INVALID"),
        (b"PUT /auth/token HTTP/1.1\r\nContent-Length: 10\r\n", 405, "UNSUPPORTED"),
    ],
)  # fmt: skip
def test_a_body_is_refused_when_the_headers_are_in(
    client: Client, resource: Recorder, head: bytes, status: int, code: str
) -> None:
    client.send(head + b"Expect: 100-continue\r\n\r\n")

    assert client.status() == status
    assert client.envelope()["code"] == code
    assert b"100 Continue" not in client.received
    assert client.closed
    # What the client sends on is dropped unread, and never reaches a Resource.
    answered = client.received
    client.send(b"x" * 1024 * 1024)
    client.send(b"GET /v2/ HTTP/1.1\r\n\r\n")
    assert client.received == answered
    assert resource.seen == []


def test_405_names_the_methods_served(client: Client) -> None:
    client.send(b"PUT /v2/x/manifests/1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
    assert b"Allow: GET, HEAD\r\n" in client.received


def test_a_token_form_within_the_cap_is_read(
    client: Client, resource: Recorder
) -> None:
    form = b"grant_type=password&" + b"a" * (MAX_TOKEN_FORM - 100)
    client.send(
        b"POST /auth/token HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: %d\r\n\r\n" % len(form) + form
    )
    assert client.status() == 200
    assert resource.seen == [(b"POST", b"/auth/token", form)]


def test_a_chunked_token_form_is_capped_as_it_comes(
    client: Client, resource: Recorder
) -> None:
    client.send(b"POST /auth/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 8192
    for _ in range(MAX_TOKEN_FORM // len(chunk) + 2):
        client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert client.status() == 413
    assert client.closed
    assert resource.seen == []
    # What it received is dropped at once, not when the connection ends.
    assert client.channel.requests[-1].content.closed


def test_a_small_chunked_token_form_is_read(client: Client, resource: Recorder) -> None:
    client.send(
        b"POST /auth/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nab=cd\r\n0\r\n\r\n"
    )
    assert client.status() == 200
    assert resource.seen == [(b"POST", b"/auth/token", b"ab=cd")]


def test_a_100_kib_header_gets_431(client: Client) -> None:
    client.send(b"GET /v2/ HTTP/1.1\r\nX-Big: " + b"a" * 100 * 1024 + b"\r\n\r\n")
    assert client.status() == 431
    assert client.envelope()["code"] == "UNSUPPORTED"
    assert client.closed


def test_a_100_kib_header_in_small_pieces_gets_431(client: Client) -> None:
    client.send(b"GET /v2/ HTTP/1.1\r\nX-Big: ")
    for _ in range(100):
        client.send(b"a" * 1024)
    assert client.status() == 431


def test_many_headers_within_the_size_get_431(
    client: Client, resource: Recorder
) -> None:
    headers = b"".join(b"X-%d: v\r\n" % n for n in range(2000))
    client.send(b"GET /v2/ HTTP/1.1\r\n" + headers + b"\r\n")
    assert client.status() == 431
    assert json.dumps(MAX_HEADERS) in json.dumps(client.envelope()["detail"])
    assert resource.seen == []


def test_headers_too_large_in_total_get_431(client: Client) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 1000) for n in range(100))
    client.send(b"GET /v2/ HTTP/1.1\r\n" + headers + b"\r\n")
    assert client.status() == 431


def test_a_64_kib_request_line_gets_414(client: Client, resource: Recorder) -> None:
    client.send(b"GET /v2/" + b"a" * 64 * 1024 + b" HTTP/1.1\r\n\r\n")
    assert client.status() == 414
    assert client.closed
    assert resource.seen == []


def test_a_request_line_without_end_gets_414(client: Client) -> None:
    client.send(b"GET /" + b"a" * 64 * 1024)
    assert client.status() == 414


def test_a_tls_handshake_on_a_plain_port_gets_400_at_once(client: Client) -> None:
    client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert client.status() == 400
    assert client.transport.disconnecting


def test_headers_trickling_in_get_408_at_the_header_timeout(
    client: Client, reactor: MemoryReactorClock, resource: Recorder
) -> None:
    """One byte a second resets an idle timer forever; not the head timer."""
    request = b"GET /v2/ HTTP/1.1\r\nHost: m\r\nX-Slow: " + b"a" * 100
    for byte in request[: int(HEADER_TIMEOUT) - 1]:
        client.send(bytes([byte]))
        reactor.advance(1)
    assert client.received == b""
    client.send(b"G")
    reactor.advance(1)
    assert client.status() == 408
    assert client.envelope()["detail"] == {"timeout": HEADER_TIMEOUT}
    assert client.closed
    assert resource.seen == []


def test_a_connection_that_says_nothing_is_closed_without_an_answer(
    client: Client, reactor: MemoryReactorClock
) -> None:
    reactor.advance(HEADER_TIMEOUT)
    assert client.received == b""
    assert client.transport.disconnecting


def test_the_head_timer_starts_again_with_the_next_request(
    client: Client, reactor: MemoryReactorClock, resource: Recorder
) -> None:
    client.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    answered = len(client.received)
    # Idle between requests: the idle timeout, not the head timeout.
    reactor.advance(HEADER_TIMEOUT * 3)
    assert not client.closed
    client.send(b"GET /v2/ HT")
    reactor.advance(HEADER_TIMEOUT)
    assert b" 408 " in client.received[answered:]
    assert len(resource.seen) == 1


def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout(
    client: Client, reactor: MemoryReactorClock
) -> None:
    client.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    reactor.advance(IDLE_TIMEOUT - 1)
    assert not client.transport.disconnecting
    reactor.advance(1)
    assert client.transport.disconnecting


def test_a_refused_connection_closes_when_the_client_pauses(
    client: Client, reactor: MemoryReactorClock
) -> None:
    client.send(b"POST /v2/ HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")
    client.send(b"x" * 1000)
    reactor.advance(LINGER_IDLE - 1)
    client.send(b"x" * 1000)  # still sending: keep draining a little
    reactor.advance(LINGER_IDLE - 1)
    assert not client.transport.disconnected
    reactor.advance(1)
    assert client.transport.disconnected


def test_a_refused_connection_closes_at_the_latest_after_the_linger(
    client: Client, reactor: MemoryReactorClock
) -> None:
    client.send(b"POST /v2/ HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
    for _ in range(int(LINGER_TOTAL) - 1):
        client.send(b"x" * 1000)
        reactor.advance(1)
    assert not client.transport.disconnected
    client.send(b"x")
    reactor.advance(1)
    assert client.transport.disconnected


def test_a_connection_beyond_the_capacity_gets_503(
    reactor: MemoryReactorClock,
    site: DocxySite,
    resource: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Client(reactor, site)
    monkeypatch.setattr(channel_module, "client_capacity", lambda: 1)
    second = Client(reactor, site)
    assert second.status() == 503
    assert second.envelope()["code"] == "UNAVAILABLE"
    assert b"Retry-After: 1\r\n" in second.received
    second.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    first.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    assert first.status() == 200
    assert resource.seen == [(b"GET", b"/v2/", b"")]


def test_capacity_leaves_descriptors_for_the_transfers() -> None:
    soft, _ = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    assert client_capacity() == max(1, (soft - RESERVE) // 2)
