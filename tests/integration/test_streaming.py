"""Streaming, backpressure and failure behaviour of the real ``twistd docxy``.

Every test runs real processes on loopback: the blob server stand-in
(tests/support/blob_server.py) as upstream, Docxy in front of it, and a raw
socket client here, so we control exactly when the client reads, stops
reading or disconnects, and can see from the upstream's event log what
Docxy did with its upstream connection.

No assertion is about time.  Where a broken Docxy would hang, a generous
socket timeout or ``wait_until`` deadline turns the hang into a failure.
The timeout cases (stalled upstream, a client that stops reading, an
upstream that never answers) are tested in memory on a fake clock, in
tests/unit/test_streaming.py; these are the ones that need real sockets.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.blob_server import BlobServerProcess
from tests.support.docxy import Docxy
from tests.support.processes import LOOPBACK, ManagedProcess, free_port, wait_until

MiB = 1024 * 1024
BIG = 256 * MiB
CLIENT_TIMEOUT = 60.0  # failure mode for "Docxy hangs", not a speed limit


# --------------------------------------------------------------------------
# A raw HTTP/1.1 client: we need control over reads that urllib/http.client
# hide (partial reads, stopping, telling a clean end from a cut connection).
# --------------------------------------------------------------------------


class RawResponse:
    """Status line, headers and an incremental body reader over one socket.

    ``complete`` becomes true only when the body ended the way HTTP says a
    complete body ends (Content-Length reached, or the chunked terminator);
    ``ended`` says how reading stopped otherwise ("eof" or "reset").
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(
                    f"connection closed before headers: {bytes(buf)!r}"
                )
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.length: int | None = (
            int(self.headers["content-length"])
            if "content-length" in self.headers
            else None
        )
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._raw = bytearray(rest)
        self._chunk_left = 0
        self._chunk_state = "size"  # size | data | crlf | done
        self.received = 0
        self.sha256 = hashlib.sha256()
        self.complete = False
        self.ended: str | None = None  # "complete", "eof" or "reset"

    def _fill(self) -> bool:
        """Read more raw bytes; False (and ``ended`` set) at EOF or reset."""
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            self.ended = "reset"
            return False
        if not data:
            self.ended = "eof"
            return False
        self._raw += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._raw[:n])
        del self._raw[:n]
        return out

    def read(self, limit: int = 256 * 1024) -> bytes:
        """Up to ``limit`` decoded body bytes; b"" once the body has ended."""
        while self.ended is None:
            if self.chunked:
                data = self._read_chunked(limit)
            else:
                want = (
                    limit
                    if self.length is None
                    else min(limit, self.length - self.received)
                )
                if want == 0:
                    self._mark_complete()
                    return b""
                data = self._take(want) if self._raw else b""
                if not data and not self._fill():
                    return b""
            if data:
                self.received += len(data)
                self.sha256.update(data)
                if (
                    self.length is not None
                    and self.received == self.length
                    and not self.chunked
                ):
                    self._mark_complete()
                return data
        return b""

    def _mark_complete(self) -> None:
        self.complete = True
        self.ended = "complete"

    def _read_chunked(self, limit: int) -> bytes:
        """One step of a chunked decoder; b"" means "call again"."""
        if self._chunk_state == "size":
            if b"\r\n" not in self._raw:
                self._fill()
                return b""
            line, _, _ = bytes(self._raw).partition(b"\r\n")
            del self._raw[: len(line) + 2]
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                # The terminator: whatever follows, the body looked complete.
                self._chunk_state = "done"
                self._mark_complete()
                return b""
            self._chunk_left = size
            self._chunk_state = "data"
            return b""
        if self._chunk_state == "data":
            if not self._raw and not self._fill():
                return b""
            data = self._take(min(limit, self._chunk_left))
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._chunk_state = "crlf"
            return data
        if self._chunk_state == "crlf":
            if len(self._raw) < 2:
                self._fill()
                return b""
            assert self._take(2) == b"\r\n", "malformed chunked encoding"
            self._chunk_state = "size"
        return b""

    def read_exactly(self, n: int) -> None:
        """Consume ``n`` body bytes (fails if the body ends first)."""
        target = self.received + n
        while self.received < target:
            if not self.read(min(256 * 1024, target - self.received)):
                raise AssertionError(
                    f"body ended ({self.ended}) after {self.received} bytes"
                )

    def drain(self, rate: float | None = None) -> None:
        """Read until the body ends; ``rate`` (bytes/s) paces a slow reader."""
        started = time.monotonic()
        while self.read():
            if rate is not None:
                ahead = self.received / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing a deliberately slow reader

    def close(self) -> None:
        self.sock.close()


def get(
    port: int, path: str, rcvbuf: int | None = None, timeout: float = CLIENT_TIMEOUT
) -> RawResponse:
    """Send one GET on a fresh connection and read the response head."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Set before connect so the window is small from the start: the
        # kernel should not absorb what a slow client "did not read".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((LOOPBACK, port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        "User-Agent: docxy-streaming-test\r\nAccept: */*\r\n\r\n".encode()
    )
    return RawResponse(sock)


# --------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------


class Processes:
    """Everything a test started, stopped by PID at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[ManagedProcess] = []

    def upstream(self, size: int = BIG, framing: str = "length") -> BlobServerProcess:
        proc = BlobServerProcess(self.workdir, size, framing=framing)
        self.started.append(proc)
        return proc

    def docxy(self, upstream_url: str, *extra: str) -> Docxy:
        started = self.started

        class TrackedDocxy(Docxy):
            """Registers itself before waiting, so a failed start is stopped too."""

            def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
                started.append(self)
                super().wait_for_port(port, timeout)

        return TrackedDocxy(upstream_url, self.workdir / "docxy.log", extra_args=extra)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def diagnostics(*ps: ManagedProcess) -> str:
    return "\n".join(
        f"--- {p.argv[:4]} log tail ---\n{p.log_text()[-3000:]}" for p in ps
    )


def wait_upstream_closed(
    upstream: BlobServerProcess, docxy: Docxy
) -> dict[int, dict[str, object]]:
    """Wait until every upstream connection that carried the blob GET closed."""

    def closed() -> bool:
        conns = upstream.blob_get_conns()
        return bool(conns) and conns <= upstream.closes().keys()

    try:
        wait_until(
            closed,
            timeout=CLIENT_TIMEOUT,
            what="Docxy to close its upstream connection",
        )
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}\nupstream events: {upstream.events()}\n{diagnostics(docxy)}"
        ) from None
    closes = upstream.closes()
    return {c: closes[c] for c in upstream.blob_get_conns()}


def assert_error_envelope(body: bytes, headers: dict[str, str]) -> dict[str, object]:
    """The registry error JSON, without Python/Twisted exception text."""
    text = body.decode("utf-8", "replace")
    # The exception's type name as a summary is fine ("cannot connect:
    # ConnectionRefusedError"); its message, repr or traceback is not.
    for leak in (
        "Traceback",
        'File "',
        "Failure",
        "twisted.",
        "Error(",
        "object at 0x",
        "<class",
        "Connection was refused",
        "by other side",
        "Errno",
    ):
        assert leak not in text, f"exception text leaked to the client: {text!r}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(text)
    assert (
        isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"]
    ), doc
    for err in doc["errors"]:
        assert {"code", "message", "detail"} <= set(err), err
        assert isinstance(err["code"], str) and err["code"], err
        assert isinstance(err["message"], str) and err["message"], err
    return doc


def plain_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_client_disconnect_mid_blob_closes_upstream(procs: Processes) -> None:
    """A client gone after 8 MiB must not leave Docxy pulling 256 MiB.

    A Docxy that buffers, or ignores the disconnect, keeps reading (or keeps
    the connection open): the close event never comes or shows ~256 MiB.
    """
    upstream = procs.upstream(BIG)
    docxy = procs.docxy(upstream.url)

    resp = get(docxy.port, upstream.blob_path(), rcvbuf=256 * 1024)
    assert resp.status == 200, (resp.status_line, diagnostics(docxy))
    resp.read_exactly(8 * MiB)
    resp.close()

    closes = wait_upstream_closed(upstream, docxy)
    sent = sum(int(str(c["bytes_sent"])) for c in closes.values())
    assert sent < 64 * MiB, f"upstream sent {sent} bytes after the client left at 8 MiB"
    assert docxy.alive()


@pytest.mark.parametrize(
    "framing",
    # "close": no length, not chunked; only the digest can tell a cut.
    ["length", "chunked", "close"],
)
def test_upstream_killed_mid_blob_gives_client_a_short_read(
    procs: Processes, framing: str
) -> None:
    """An upstream dying mid-body must reach the client as a truncated body.

    If Docxy finished the response instead (``finish()`` rather than dropping
    the connection), the client would see a complete-looking, wrong blob.
    ``framing`` is how the upstream delimits its body: with Content-Length or
    chunks the cut is visible to Docxy as an error; with a close-delimited
    (HTTP/1.0-style) body the cut looks like a normal end, and only the
    blob's digest, which Docxy knows from the URL, can tell them apart.
    """
    upstream = procs.upstream(BIG, framing=framing)
    docxy = procs.docxy(upstream.url)

    resp = get(docxy.port, upstream.blob_path(), rcvbuf=256 * 1024)
    assert resp.status == 200, (resp.status_line, diagnostics(docxy))
    assert resp.length is not None or resp.chunked, (
        "body delimited only by close: a cut is indistinguishable from the end "
        f"{resp.headers}"
    )
    resp.read_exactly(8 * MiB)
    upstream.kill(signal.SIGKILL)
    upstream.popen.wait(CLIENT_TIMEOUT)

    resp.drain()  # a hang here is the socket timeout: a failure
    resp.close()
    assert not resp.complete, (
        f"client saw a complete body ({resp.received} bytes, headers {resp.headers}) "
        "although the upstream died mid-blob"
    )
    assert resp.ended in ("eof", "reset")
    if resp.length is not None:
        assert resp.received < resp.length
    assert resp.received < BIG


def test_slow_reader_keeps_docxy_memory_flat(procs: Processes) -> None:
    """256 MiB to a slow reader: Docxy's peak RSS stays far below the blob.

    Without backpressure the upstream outruns the reader and Docxy holds the
    difference (hundreds of MiB).  Also proves the bytes arrive intact and
    with a real Content-Length (clients show progress and detect truncation).
    """
    upstream = procs.upstream(BIG)
    docxy = procs.docxy(upstream.url)
    idle_hwm = vm_hwm(docxy.pid)

    resp = get(docxy.port, upstream.blob_path(), rcvbuf=512 * 1024)
    assert resp.status == 200, (resp.status_line, diagnostics(docxy))
    assert resp.length == BIG, f"Content-Length not forwarded: {resp.headers}"
    assert not resp.chunked, resp.headers
    resp.drain(rate=128 * MiB)  # about 2 s; the upstream is many times faster
    resp.close()

    assert resp.complete, f"short body: {resp.received} of {BIG} ({resp.ended})"
    assert "sha256:" + resp.sha256.hexdigest() == upstream.digest
    peak = vm_hwm(docxy.pid)
    assert peak < 150 * MiB, (
        f"Docxy peak RSS {peak / MiB:.0f} MiB (idle {idle_hwm / MiB:.0f} MiB) "
        "streaming 256 MiB to a slow reader"
    )


def test_relayed_bodies_are_intact_and_leave_the_upstream_connection_reusable(
    procs: Processes,
) -> None:
    """Two reads in a row, each intact, over one upstream connection.

    On plain TCP the body goes socket to socket past Twisted's transports
    (docxy.socket_relay) and Docxy's HTTP client is told how much went past
    it. If it were told wrong, the first response would never end (a hang:
    the socket timeout), end early, or the connection could not carry the
    second request.
    """
    size = 64 * MiB
    upstream = procs.upstream(size)
    docxy = procs.docxy(upstream.url)
    for _ in range(2):
        resp = get(docxy.port, upstream.blob_path())
        assert resp.status == 200, (resp.status_line, diagnostics(docxy))
        resp.drain()
        resp.close()
        assert resp.complete, f"short body: {resp.received} of {size} ({resp.ended})"
        assert "sha256:" + resp.sha256.hexdigest() == upstream.digest
    conns = upstream.blob_get_conns()
    assert len(conns) == 1, f"{conns}: {upstream.events()}\n{diagnostics(docxy)}"


def test_client_leaving_before_upstream_answers_cancels_upstream_request(
    procs: Processes,
) -> None:
    """A client gone while Docxy still waits for upstream headers must
    cancel that upstream request, not leave it to the header timeout.

    The upstream here accepts and reads the request but never answers.
    --header-timeout is far longer than our wait, so only the cancellation
    can close the upstream connection in time.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    accepted: socket.socket | None = None
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        listener.settimeout(CLIENT_TIMEOUT)
        upstream_url = f"http://{LOOPBACK}:{listener.getsockname()[1]}"
        docxy = procs.docxy(upstream_url, "--header-timeout", "3600")

        client = socket.create_connection((LOOPBACK, docxy.port), CLIENT_TIMEOUT)
        client.sendall(
            b"GET /v2/x/blobs/sha256:" + b"ef" * 32 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        accepted, _ = listener.accept()
        accepted.settimeout(CLIENT_TIMEOUT)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = accepted.recv(65536)
            assert chunk, f"Docxy closed before sending its request: {request!r}"
            request += chunk
        assert b"/blobs/sha256:" + b"ef" * 32 in request, request

        client.close()
        try:
            leftover = accepted.recv(65536)
        except ConnectionResetError:
            leftover = b""  # aborted: as good as closed
        except TimeoutError:
            raise AssertionError(
                "Docxy kept its upstream request open after the client left\n"
                + diagnostics(docxy)
            ) from None
        assert leftover == b"", f"unexpected bytes from Docxy: {leftover!r}"
    finally:
        if accepted is not None:
            accepted.close()
        listener.close()


def test_unreachable_upstream_is_502_envelope(procs: Processes) -> None:
    """Connection refused upstream -> 502 in the registry's JSON error format.

    Clients (docker, containerd) parse the envelope; a Twisted error page or
    a traceback would also leak internals.
    """
    docxy = procs.docxy(f"http://{LOOPBACK}:{free_port()}")
    status, headers, body = plain_get(docxy.port, "/v2/x/blobs/sha256:" + "ab" * 32)
    assert status == 502, (status, body[:500], diagnostics(docxy))
    assert_error_envelope(body, headers)
