"""Proxied bodies on plain TCP, moved socket to socket by ``SocketRelay``.

Docxy's real Site (no cache) on 127.0.0.1 in front of a scripted upstream,
with real sockets. What is checked: the body is exact, went past Twisted's
transports, and is counted; a client that reads nothing makes Docxy hold
one buffer at most and stop reading the upstream; an upstream that ends
early drops the client (a short read, never a complete-looking body).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import NOT_DONE_YET, Request

from docxy import socket_relay
from docxy.socket_relay import HELD, BufferMover, PipeMover, SocketRelay
from tests.support.digests import sha256_digest

from .harness import FakeUpstream, Harness, raw_get, read_whole, start, until

BIG = os.urandom(24 * 1024 * 1024)
BIG_DIGEST = sha256_digest(BIG)
UPSTREAM_PATH = f"/v2/library/alpine/blobs/{BIG_DIGEST}"
CLIENT_PATH = f"/v2/alpine/blobs/{BIG_DIGEST}"


def whole(request: Request) -> bytes:
    request.setHeader(b"content-length", b"%d" % len(BIG))
    return BIG


def half_then_close(request: Request) -> int:
    """Promises the whole blob, sends half, closes (after the half went)."""
    request.setHeader(b"content-length", b"%d" % len(BIG))
    request.write(BIG[: len(BIG) // 2])
    transport: Any = request.channel.transport
    transport.unregisterProducer()  # else the channel keeps it open
    transport.loseConnection()
    return NOT_DONE_YET


@pytest_twisted.async_yield_fixture
async def proxy() -> AsyncIterator[Harness]:
    upstream = FakeUpstream()
    upstream.routes[UPSTREAM_PATH.encode()] = whole
    harness = await start(upstream)
    yield harness
    await harness.stop()


@pytest.fixture(params=["buffer", "pipe"])
def relays(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[SocketRelay]]:
    """Every relay that took a body over; each test runs with the loopback
    client's buffer and, as if the client were elsewhere, the pipe."""
    if request.param == "pipe":
        monkeypatch.setattr(socket_relay, "on_loopback", lambda address: False)
    kind = BufferMover if request.param == "buffer" else PipeMover
    started: list[SocketRelay] = []
    real = SocketRelay.start

    def start(self: SocketRelay) -> bool:
        taken = real(self)
        if taken:
            assert isinstance(self.mover, kind)  # can fail: the other way
            started.append(self)
        return taken

    monkeypatch.setattr(SocketRelay, "start", start)
    yield started


@pytest_twisted.ensureDeferred
async def test_a_proxied_body_goes_socket_to_socket_with_its_bytes_counted(
    proxy: Harness, relays: list[SocketRelay], access_events: list[dict[str, Any]]
) -> None:
    for _ in range(2):  # the second over the same upstream connection
        reply = await proxy.request(b"GET", CLIENT_PATH)
        assert reply.code == 200 and reply.body == BIG
    assert len(relays) == 2  # can fail: a body left to Twisted passes the rest
    for relay in relays:
        # All but the first chunks (before it took over) and the last byte.
        assert len(BIG) // 2 < relay.relayed < len(BIG)
        assert relay.body.remaining == 0  # the parser read the last byte
    assert [(e["status"], e["bytes"]) for e in access_events] == [(200, len(BIG))] * 2
    assert len(proxy.upstream.seen) == 2


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_holds_one_buffer_and_stops_the_upstream(
    proxy: Harness, relays: list[SocketRelay]
) -> None:
    client = raw_get(proxy, CLIENT_PATH, rcvbuf=64 * 1024)
    try:
        await until(lambda: bool(relays), "the relay to take over")
        relay = relays[0]
        mover = relay.mover
        assert mover is not None

        # Full: the upstream waits in its socket, not read.
        await until(lambda: mover.held > 0 and not relay._reading, "a full relay")
        assert 0 < mover.held <= HELD
        transport: Any = relay.client
        assert len(transport.dataBuffer) - transport.offset == 0
        assert transport._tempDataLen == 0  # nothing queued in Twisted either
        assert relay.relayed < len(BIG) - HELD

        head, body = await read_whole(client, BIG)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == BIG
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_ends_early_drops_the_client(
    proxy: Harness, relays: list[SocketRelay], access_events: list[dict[str, Any]]
) -> None:
    proxy.upstream.routes[UPSTREAM_PATH.encode()] = half_then_close
    client = raw_get(proxy, CLIENT_PATH)
    received = bytearray()
    closed = False

    def client_closed() -> bool:
        nonlocal closed
        while True:
            try:
                data = client.recv(1 << 20)
            except BlockingIOError:
                return False
            except ConnectionResetError:
                closed = True
                return True
            if not data:
                closed = True
                return True
            received.extend(data)

    try:
        await until(client_closed, "Docxy to close the client's connection")
    finally:
        client.close()
    assert closed and relays  # can fail: the relay took the body over
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) <= len(BIG) // 2 and BIG.startswith(body)
    await until(lambda: bool(access_events), "the access-log line")
    assert access_events[0].get("outcome") == "upstream-failed", access_events[0]


@pytest_twisted.ensureDeferred
async def test_relays_beyond_the_limit_leave_their_bodies_to_twisted(
    proxy: Harness, relays: list[SocketRelay], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket_relay, "MAX_RELAYS", 1)
    stalled = raw_get(proxy, CLIENT_PATH, rcvbuf=64 * 1024)
    try:
        await until(lambda: bool(relays), "the first relay to take over")
        reply = await proxy.request(b"GET", CLIENT_PATH)
        assert reply.code == 200 and reply.body == BIG
        assert len(relays) == 1  # can fail: the second body was not relayed
        head, body = await read_whole(stalled, BIG)
        assert head.startswith(b"HTTP/1.1 200") and body == BIG
    finally:
        stalled.close()
    assert socket_relay._live == 0
    reply = await proxy.request(b"GET", CLIENT_PATH)
    assert reply.code == 200 and len(relays) == 2  # the slot was given back


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        (IPv4Address("TCP", "127.0.0.1", 5000), True),
        (IPv4Address("TCP", "127.8.9.10", 5000), True),
        (IPv4Address("TCP", "10.0.0.7", 5000), False),
        (IPv6Address("TCP", "::1", 5000), True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 5000), True),
        (IPv6Address("TCP", "fe80::1%eth0", 5000), False),
        (UNIXAddress(b"/run/docxy.sock"), True),
    ],
)
def test_loopback_clients_get_the_buffer_others_the_pipe(
    address: object, loopback: bool
) -> None:
    assert socket_relay.on_loopback(address) is loopback


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_body_leaves_no_descriptor_behind(
    proxy: Harness, relays: list[SocketRelay]
) -> None:
    before = len(os.listdir("/proc/self/fd"))
    client = raw_get(proxy, CLIENT_PATH, rcvbuf=64 * 1024)
    await until(lambda: bool(relays), "the relay to take over")
    relay = relays[0]
    client.close()
    await until(lambda: relay.mover is None, "the relay to close")
    assert socket_relay._live == 0  # can fail: a leaked slot
    await until(
        lambda: len(os.listdir("/proc/self/fd")) <= before, "every descriptor closed"
    )
    assert relay.relayed < len(BIG)
