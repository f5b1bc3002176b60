"""Streaming timeouts and flow control through Docxy's real Site, in memory.

Docxy is built by ``build_site`` on a ``MemoryReactorClock``; clients and
the upstream are iosim connections (tests/support/memory.py). So the idle
watchdog, the header timeout and twisted.web's own timeout are tested by
moving the clock: each test checks the connection is still up just before
the timeout and gone at it. The real-socket tests that prove backpressure
and flat memory are in tests/integration/test_streaming.py.
"""

from __future__ import annotations

import json

from twisted.web.server import Request

from tests.support.memory import Held, InMemoryDocxy, Scripted

DIGEST = "sha256:" + "ab" * 32
PATH = f"/v2/x/blobs/{DIGEST}"
UPSTREAM_PATH = f"/v2/library/x/blobs/{DIGEST}"
IDLE = 30.0


def stalling(held: Held, first: bytes, length: int) -> Scripted:
    """An upstream that sends ``first`` of a ``length``-byte blob, then waits."""

    def blob(request: Request) -> int:
        request.setHeader(b"content-length", str(length).encode())
        request.write(first)
        return held(request)

    return Scripted({UPSTREAM_PATH: blob})


def test_a_stalled_upstream_is_cut_by_the_idle_watchdog() -> None:
    held = Held()
    docxy = InMemoryDocxy(stalling(held, b"x" * 1000, 10_000), **{"idle-timeout": IDLE})
    client = docxy.get(PATH)
    assert client.client.status == 200
    assert len(client.client.body) == 1000

    docxy.advance(IDLE - 0.5)
    held.waiting[0].write(b"y" * 1000)  # progress resets the watchdog
    docxy.pump()
    docxy.advance(IDLE - 0.5)
    assert not client.client.lost
    assert len(client.client.body) == 2000

    docxy.advance(0.5)
    assert client.client.lost, "Docxy kept the client waiting on a stalled upstream"
    assert client.docxy_side.aborted  # a cut, never a complete-looking end
    assert held.lost, "the stalled upstream connection was left open"


def test_a_client_that_stops_reading_pauses_the_upstream_then_is_dropped() -> None:
    held = Held()
    docxy = InMemoryDocxy(stalling(held, b"x" * 1000, 10_000), **{"idle-timeout": IDLE})
    client = docxy.get(PATH)
    upstream = docxy.upstream_sockets[0]

    client.stop_reading()
    assert upstream.paused, "a full client socket did not pause the upstream"
    client.read_again()
    assert not upstream.paused
    client.stop_reading()

    docxy.advance(IDLE - 0.5)
    assert not client.client.lost
    docxy.advance(0.5)
    assert client.docxy_side.aborted, "Docxy still holds the stalled client"
    assert held.lost, "the paused upstream connection was left open"


def test_a_client_that_stops_reading_after_the_upstream_finished_is_dropped() -> None:
    """The tail: the whole blob sits in Docxy's socket buffer, the client reads
    nothing. twisted.web's own timeout (``--idle-timeout`` too) must abort
    it: a graceful close would wait forever for the buffer to drain."""
    held = Held()
    docxy = InMemoryDocxy(Scripted({UPSTREAM_PATH: held}), **{"idle-timeout": IDLE})
    client = docxy.get(PATH)
    reading = docxy.get(PATH)  # the same on another connection, read as it comes
    client.stop_reading()
    held.answer(b"z" * 5000)
    held.answer(b"z" * 5000)
    docxy.pump()
    assert client.docxy_side.stream, "nothing left in Docxy's socket buffer"
    assert reading.client.body == b"z" * 5000

    docxy.advance(IDLE - 0.5)
    assert not client.docxy_side.aborted
    docxy.advance(0.5)  # the channel's timeout: a graceful close, which waits...
    assert client.docxy_side.closing
    docxy.advance(15)  # ...until its abort timeout
    assert client.docxy_side.aborted, "Docxy holds a non-reading client"
    assert not reading.docxy_side.aborted


def test_an_upstream_that_never_answers_is_a_504_envelope() -> None:
    held = Held()
    docxy = InMemoryDocxy(Scripted({UPSTREAM_PATH: held}), **{"header-timeout": 20})
    client = docxy.get(PATH)
    docxy.advance(19.5)
    assert client.client.received == b""
    docxy.advance(0.5)
    assert client.client.status == 504
    errors = json.loads(client.client.body)["errors"]
    assert errors[0]["code"] == "UNAVAILABLE", errors
    assert held.lost, "the upstream request was not cancelled"


def test_a_blob_body_widens_the_socket_under_tls_too() -> None:
    """The sends of a blob body are widened on the TCP socket that sends,
    which under TLS is the transport under the TLS protocol."""
    from types import SimpleNamespace

    from twisted.internet import abstract
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import MemoryReactorClock
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from docxy.streaming import BODY_BUFFER, BODY_SEND_LIMIT, widen_writes

    for under_tls in (False, True):
        socket = abstract.FileDescriptor(reactor=MemoryReactorClock())
        assert socket.SEND_LIMIT < BODY_SEND_LIMIT  # Twisted's own
        transport: object = socket
        if under_tls:
            tls = TLSMemoryBIOFactory(
                CertificateOptions(), False, Factory.forProtocol(Protocol)
            )
            protocol = tls.buildProtocol(None)
            protocol.transport = socket
            transport = protocol
        request = SimpleNamespace(channel=SimpleNamespace(transport=transport))
        widen_writes(request)  # type: ignore[arg-type]
        assert (socket.SEND_LIMIT, socket.bufferSize) == (BODY_SEND_LIMIT, BODY_BUFFER)
