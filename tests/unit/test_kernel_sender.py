"""The sendfile sender's state machine, in memory.

A real twisted.web Site and channel over a transport that keeps what is
written in a buffer until the test flushes it (as a socket's ``doWrite``
would) and a scripted ``sendfile`` that copies file bytes to the same wire,
refusing to run while anything is still buffered: so "the body never
overtakes the headers", partial sends, a full socket, a broken pipe, a lost
connection and a stalled client are each exact.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from docxy.cache.kernel_sender import KernelSender

BLOB = bytes(range(256)) * 4096  # 1 MiB
IDLE = 30.0


class Socket(StringTransport):
    """Buffered writes; ``flush`` is one writable event of a real socket."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.wire = bytearray()
        self.writing = False
        self.disconnected = False
        self.producerPaused = False
        self.aborted = False
        self.channel: object = None

    def fileno(self) -> int:
        return -1

    def registerProducer(self, producer: object, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:  # as FileDescriptor does
            producer.resumeProducing()  # type: ignore[attr-defined]

    def startWriting(self) -> None:
        self.writing = True

    def abortConnection(self) -> None:
        self.aborted = True

    def flush(self) -> None:
        """The socket was writable: the buffer goes out, then a pull
        producer is asked for more."""
        assert self.writing, "nobody asked to be told the socket is writable"
        self.writing = False
        self.wire += self.value()
        self.clear()
        if self.producer is not None and not self.streaming:
            self.producer.resumeProducing()


class Script:
    """``sendfile`` that sends what the script says, one step per call."""

    def __init__(self, socket: Socket, steps: list[int | OSError]) -> None:
        self.socket, self.steps = socket, steps
        self.calls = 0

    def __call__(self, out: int, fd: int, offset: int, count: int) -> int:
        assert self.socket.value() == b"", "sendfile overtook buffered bytes"
        self.calls += 1
        step = self.steps.pop(0) if self.steps else count
        if isinstance(step, OSError):
            raise step
        data = os.pread(fd, min(step, count), offset)
        self.socket.wire += data
        return len(data)


class Serve(Resource):
    isLeaf = True

    def __init__(self, path: Path, clock: Clock) -> None:
        super().__init__()
        self.path, self.clock = path, clock
        self.steps: list[int | OSError] = []
        self.outcomes: list[tuple[str, int]] = []
        self.senders: list[KernelSender] = []
        self.script: Script | None = None

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", b"%d" % len(BLOB))
        socket = request.channel.transport
        assert isinstance(socket, Socket)
        self.script = Script(socket, self.steps)
        sender = KernelSender(
            request,
            socket,
            os.open(self.path, os.O_RDONLY),
            0,
            len(BLOB),
            self.clock,
            IDLE,
            on_end=lambda outcome, sent: self.outcomes.append((outcome, sent)),
            sendfile=self.script,
        )
        self.senders.append(sender)
        sender.start()
        return NOT_DONE_YET


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    (tmp_path / "blob").write_bytes(BLOB)
    yield Serve(tmp_path / "blob", Clock())


def connect(serve: Serve) -> tuple[Socket, object]:
    socket = Socket()
    channel = Site(serve).buildProtocol(socket.getPeer())
    assert channel is not None
    channel.makeConnection(socket)
    socket.channel = socket.producer  # the HTTPChannel, producer of the socket
    channel.dataReceived(b"GET /blob HTTP/1.1\r\nHost: mirror\r\n\r\n")
    return socket, channel


def head_and_body(wire: bytes) -> tuple[bytes, bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    return head, body


def test_the_headers_go_first_then_the_body_through_the_kernel(serve: Serve) -> None:
    socket, _channel = connect(serve)
    assert serve.script is not None and serve.script.calls == 0
    assert socket.value().startswith(b"HTTP/1.1 200")  # buffered, not sent
    socket.flush()
    head, body = head_and_body(bytes(socket.wire))
    assert b"Content-Length: %d" % len(BLOB) in head
    assert body == BLOB
    assert serve.outcomes == [("done", len(BLOB))]
    assert serve.senders[0].fd == -1  # the file is closed
    # The channel has its producer slot back, as twisted.web left it.
    assert socket.producer is socket.channel and socket.streaming


def test_a_full_socket_waits_until_it_is_writable(serve: Serve) -> None:
    serve.steps += [1000, BlockingIOError(), 5000]
    socket, _ = connect(serve)
    sender = serve.senders[0]
    socket.flush()  # headers out; 1000 bytes, a partial send: the socket is full
    assert (sender.sent, sender.waiting, socket.writing) == (1000, True, True)
    socket.flush()  # writable, but full again at once
    assert (sender.sent, sender.waiting) == (1000, True)
    socket.flush()  # 5000 more, then everything
    socket.flush()
    assert head_and_body(bytes(socket.wire))[1] == BLOB
    request = sender.request
    assert request.sentLength == len(BLOB)  # what the access log reports
    assert serve.outcomes == [("done", len(BLOB))]


def test_a_broken_pipe_is_a_client_gone_and_an_abort(serve: Serve) -> None:
    serve.steps += [1000, OSError(errno.EPIPE, "broken pipe")]
    socket, _ = connect(serve)
    socket.flush()
    socket.flush()
    assert socket.aborted
    assert serve.outcomes == [("client-gone", 1000)]
    assert serve.senders[0].fd == -1


def test_a_connection_lost_mid_transfer_closes_the_file(serve: Serve) -> None:
    serve.steps += [1000]
    socket, channel = connect(serve)
    socket.flush()
    sender = serve.senders[0]
    assert IPullProducer.providedBy(socket.producer)
    # What FileDescriptor.connectionLost does: stop the producer, tell the protocol.
    socket.producer.stopProducing()
    socket.producer = None
    socket.disconnected = True
    channel.connectionLost(Failure(ConnectionError("reset")))  # type: ignore[attr-defined]
    assert serve.outcomes == [("client-gone", 1000)]
    assert sender.fd == -1


def test_a_client_that_reads_nothing_is_dropped_after_the_idle_timeout(
    serve: Serve,
) -> None:
    serve.steps += [1000, BlockingIOError()]
    socket, _ = connect(serve)
    socket.flush()
    socket.flush()
    serve.clock.advance(IDLE - 1)
    assert serve.outcomes == []
    serve.clock.advance(1)
    assert socket.aborted
    assert serve.outcomes == [("idle-timeout", 1000)]
    assert serve.senders[0].fd == -1


def test_a_client_gone_before_the_body_starts_closes_the_file(serve: Serve) -> None:
    socket, channel = connect(serve)
    socket.producer = None
    socket.disconnected = True
    channel.connectionLost(Failure(ConnectionError("reset")))  # type: ignore[attr-defined]
    assert serve.outcomes == [("client-gone", 0)]
    assert serve.senders[0].fd == -1
