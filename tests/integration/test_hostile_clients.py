"""Hostile and broken clients against the real ``twistd docxy`` (issue 8, item 5).

Raw sockets, because no well-behaved client sends a 200 MiB push to a
read-only mirror, a 100 KiB header or a request head that never ends. What
must hold: an answer in the registry error envelope before the connection
closes, flat memory, other clients served as usual, and a descriptor limit
that is reached without a crash. The timers themselves are tested on a
fake clock in tests/unit/test_channel.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.blob_server import BlobServerProcess
from tests.support.docxy import Docxy, DocxyFactory
from tests.support.processes import LOOPBACK
from tests.support.registry import Upstream, fetch
from tests.support.skopeo import assert_pulled, skopeo_pull


@pytest.fixture
def docxy(docxy_factory: DocxyFactory, upstream: Upstream) -> Docxy:
    """A Docxy of its own for each test: the memory checks read the peak
    RSS since the process started, which the session's shared one is not."""
    return docxy_factory(upstream.url)


MIB = 1024 * 1024


def connect(docxy: Docxy) -> socket.socket:
    return socket.create_connection((LOOPBACK, docxy.port), timeout=60)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the answer"
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body[:length]


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def envelope_code(headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)["errors"][0]
    assert set(error) == {"code", "message", "detail"} and error["message"]
    code: str = error["code"]
    return code


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def spooled_files(pid: int) -> list[str]:
    """Open files that are deleted or anonymous: where a body would be spooled."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if "(deleted)" in target or target.startswith(("/tmp/#", "/var/tmp/")):
            found.append(target)
    return found


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        ("PUT /v2/library/alpine/blobs/uploads/1 HTTP/1.1", 405, "UNSUPPORTED"),
        ("POST /v2/library/alpine/blobs/uploads/ HTTP/1.1", 405, "UNSUPPORTED"),
        ("POST /auth/token HTTP/1.1", 413, "SIZE_INVALID"),
        ("GET /v2/library/alpine/manifests/3.20 HTTP/1.1", 413, "SIZE_INVALID"),
    ],
)
def test_a_200_mib_body_is_answered_on_its_headers_and_never_read(
    docxy: Docxy, head: str, status: int, code: str
) -> None:
    size = 200 * MIB
    before = memory_kib(docxy.pid, "VmRSS")
    with connect(docxy) as sock:
        sock.sendall(
            f"{head}\r\nHost: mirror\r\nContent-Type: application/x-www-form-"
            f"urlencoded\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        # The answer comes on the headers alone: not one body byte sent yet.
        got, headers, body = read_answer(sock)
        assert (got, envelope_code(headers, body)) == (status, code)
        sent = 0
        chunk = b"\0" * MIB
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert spooled_files(docxy.pid) == []
        assert closed_by_peer(sock)
    # Flat: the peak since start grew by far less than the body.
    assert memory_kib(docxy.pid, "VmHWM") - before < 48 * 1024
    assert docxy.alive()


BIG_HEADER = b"X-Big: " + b"a" * 100 * 1024 + b"\r\n"
MANY_HEADERS = b"".join(b"X-%d: v\r\n" % n for n in range(2000))
LONG_TARGET = b"/v2/" + b"a" * 64 * 1024


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /v2/ HTTP/1.1\r\nHost: m\r\n" + BIG_HEADER + b"\r\n", 431),
        (b"GET /v2/ HTTP/1.1\r\n" + MANY_HEADERS + b"\r\n", 431),
        (b"GET " + LONG_TARGET + b" HTTP/1.1\r\nHost: m\r\n\r\n", 414),
    ],
    ids=["100-KiB-header", "2000-headers", "64-KiB-request-line"],
)
def test_oversized_request_heads_get_a_status_before_the_close(
    docxy: Docxy, request_head: bytes, status: int
) -> None:
    with connect(docxy) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request_head)  # refused half-way: the answer is still there
        got, headers, body = read_answer(sock)
        assert got == status
        assert envelope_code(headers, body) == "UNSUPPORTED"
        assert closed_by_peer(sock)


def test_hundreds_of_slow_clients_starve_no_one(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """300 connections that never finish their headers: skopeo still pulls,
    and each of them gets 408 at the header timeout."""
    docxy = docxy_factory(upstream.url, "--client-header-timeout", "3")
    with ExitStack() as stack:
        slow = []
        for n in range(300):
            sock = stack.enter_context(connect(docxy))
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: m\r\nX-Slow-%d: " % n)
            slow.append(sock)

        out = tmp_path / "out"
        skopeo_pull(docxy.hostport, "library/alpine:3.20", out, "--quiet")
        assert_pulled(out, [], manifest=upstream.images["library/alpine:3.20"].digest)

        for sock in slow:
            status, headers, body = read_answer(sock)
            assert status == 408
            assert envelope_code(headers, body) == "UNKNOWN"
            assert closed_by_peer(sock)
    assert docxy.alive()


@pytest.fixture
def big_blob(tmp_path: Path) -> Iterator[BlobServerProcess]:
    server = BlobServerProcess(tmp_path, 64 * MIB)
    try:
        yield server
    finally:
        server.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_reached_descriptor_limit_refuses_new_connections_and_finishes_transfers(
    docxy_factory: DocxyFactory, big_blob: BlobServerProcess
) -> None:
    docxy = docxy_factory(big_blob.url, library_prefix="off")
    soft, hard = resource.prlimit(docxy.pid, resource.RLIMIT_NOFILE)
    with connect(docxy) as transfer:
        transfer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        transfer.sendall(
            f"GET {big_blob.blob_path()} HTTP/1.1\r\nHost: m\r\n\r\n".encode()
        )
        received = transfer.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 "), received[:200]
        # The transfer is under way and held by this client not reading.
        try:
            # Near the limit: more clients would take what transfers need.
            near = open_fds(docxy.pid) + 16
            resource.prlimit(docxy.pid, resource.RLIMIT_NOFILE, (near, hard))
            for _ in range(20):
                with connect(docxy) as refused:
                    refused.sendall(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
                    status, headers, body = read_answer(refused)
                    assert (status, envelope_code(headers, body)) == (
                        503,
                        "UNAVAILABLE",
                    )
                    assert closed_by_peer(refused)
            # At the limit: no accept() is possible, Twisted closes at once
            # (or, once a descriptor is free again, the 503).
            at = open_fds(docxy.pid)
            resource.prlimit(docxy.pid, resource.RLIMIT_NOFILE, (at, hard))
            for _ in range(50):
                with connect(docxy) as refused:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        refused.sendall(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
                    answer = b""
                    with contextlib.suppress(ConnectionResetError):
                        while chunk := refused.recv(65536):
                            answer += chunk
                    assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
            assert docxy.alive()
        finally:
            resource.prlimit(docxy.pid, resource.RLIMIT_NOFILE, (soft, hard))

        head, _, body = received.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        hasher = hashlib.sha256(body)
        got = len(body)
        while got < length:
            chunk = transfer.recv(MIB)
            assert chunk, f"transfer cut at {got} of {length}"
            hasher.update(chunk)
            got += len(chunk)
        assert "sha256:" + hasher.hexdigest() == big_blob.digest
    # Descriptors free again: served again.
    assert fetch(f"{docxy.url}/health").status == 200


def test_an_idle_connection_is_closed_at_the_idle_timeout(
    docxy_factory: DocxyFactory, upstream: Upstream
) -> None:
    """Between requests a connection may sit idle only ``idle-timeout``."""
    docxy = docxy_factory(upstream.url, "--idle-timeout", "2")
    with connect(docxy) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
        status, _, _ = read_answer(sock)
        assert status == 200
        assert closed_by_peer(sock)  # with nothing sent, Docxy hangs up
