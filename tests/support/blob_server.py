"""A stand-in upstream registry that serves one large blob, streamed.

Why it exists: the streaming tests need an upstream whose behaviour we can
observe and control exactly (how many bytes it actually sent on each
connection, when connections open and close, stalling mid-body), which the
real distribution registry cannot tell us.

It answers ``GET /v2/`` and ``GET``/``HEAD /v2/<name>/blobs/sha256:<hex>``
for the single blob it was started with.  The blob is deterministic
pseudo-random content generated chunk by chunk (never held in memory), and
the body is written by a push producer registered on the request, so it only
sends as fast as the peer reads.

Events go to ``--events`` as JSON lines::

    {"event": "open", "conn": 1, "peer": 40312, ...}
    {"event": "request", "conn": 1, "method": "GET", "path": "...", "range": null}
    {"event": "stall", "conn": 1, "bytes_sent": 1048576}
    {"event": "done", "conn": 1, "bytes_sent": 268435456}   (whole body written)
    {"event": "close", "conn": 1, "bytes_sent": 8454144, "reason": "..."}

``bytes_sent`` counts body bytes handed to the transport on that connection.

Run: ``python -m tests.support.blob_server --port P --size BYTES --events FILE
[--stall-after BYTES] [--framing length|chunked|close]``.  ``--framing``
chooses how the GET body is delimited: Content-Length (default, as real
registries do), chunked, or by closing the connection (HTTP/1.0 style).
When ready it prints one line ``READY port=P size=N digest=sha256:<hex>``
(flushed) to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

from .processes import ManagedProcess, free_port

CHUNK = 64 * 1024
_POOL_SIZE = 1024 * 1024
_STRIDE = 4099  # odd stride through the pool so consecutive chunks differ
_SEED = 0xD0C51

_pool: bytes | None = None


def _get_pool() -> bytes:
    """A fixed random pool; chunks are windows into it plus a chunk counter."""
    global _pool
    if _pool is None:
        _pool = random.Random(_SEED).randbytes(_POOL_SIZE + CHUNK)
    return _pool


def chunk_bytes(index: int) -> bytes:
    """Chunk ``index`` (each ``CHUNK`` bytes) of the infinite pseudo-random stream.

    Every chunk carries its own index, so a proxy that drops, repeats or
    reorders chunks changes the digest.
    """
    pool = _get_pool()
    start = (index * _STRIDE) % _POOL_SIZE
    return struct.pack(">Q", index) + pool[start + 8 : start + CHUNK]


def iter_content(size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Yield bytes ``[start, end)`` of the ``size``-byte blob, at most CHUNK each."""
    stop = size if end is None else min(end, size)
    pos = start
    while pos < stop:
        index, offset = divmod(pos, CHUNK)
        piece = chunk_bytes(index)[offset : offset + (stop - pos)]
        yield piece
        pos += len(piece)


def blob_digest(size: int) -> str:
    """``sha256:<hex>`` of the ``size``-byte blob (generated once, streamed)."""
    h = hashlib.sha256()
    for piece in iter_content(size):
        h.update(piece)
    return "sha256:" + h.hexdigest()


class EventLog:
    """Append-only JSON-lines log, flushed per line so tests can poll it."""

    def __init__(self, path: str) -> None:
        self._fh: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": time.time(), **fields}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()


class CountingChannel(http.HTTPChannel):
    """HTTPChannel that numbers itself and reports open/close and bytes sent."""

    events: EventLog
    _next_id = 0

    def connectionMade(self) -> None:
        CountingChannel._next_id += 1
        self.conn_id = CountingChannel._next_id
        self.bytes_sent = 0
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.events.write("open", conn=self.conn_id, peer=getattr(peer, "port", None))
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.events.write(
            "close",
            conn=self.conn_id,
            bytes_sent=self.bytes_sent,
            reason=reason.getErrorMessage(),
        )
        super().connectionLost(reason)


@implementer(IPushProducer)
class BodyProducer:
    """Writes a byte range of the blob, only while the transport wants more.

    Why push: we decide how much to write per reactor turn and stop at once
    when paused, so the bytes we count are bounded by what the peer drained.
    """

    BURST = 16  # chunks per reactor turn at most, so one client cannot hog it

    def __init__(
        self,
        request: server.Request,
        channel: CountingChannel,
        size: int,
        start: int,
        end: int,
        stall_after: int | None,
        events: EventLog,
        clock: IReactorTime,
    ) -> None:
        self.request = request
        self.channel = channel
        self.pieces = iter_content(size, start, end)
        self.stall_after = stall_after
        self.events = events
        self.clock = clock
        self.paused = False
        self.stopped = False
        self.stalled = False
        self._scheduled: Any = None

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled is None and not (
            self.paused or self.stopped or self.stalled
        ):
            self._scheduled = self.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = None
        for _ in range(self.BURST):
            if self.paused or self.stopped or self.stalled:
                return
            if (
                self.stall_after is not None
                and self.channel.bytes_sent >= self.stall_after
            ):
                # Keep the connection open, send nothing more: a stuck upstream.
                self.stalled = True
                self.events.write(
                    "stall",
                    conn=self.channel.conn_id,
                    bytes_sent=self.channel.bytes_sent,
                )
                return
            piece = next(self.pieces, None)
            if piece is None:
                self.stopped = True
                self.request.unregisterProducer()
                self.request.finish()
                self.events.write(
                    "done",
                    conn=self.channel.conn_id,
                    bytes_sent=self.channel.bytes_sent,
                )
                return
            if self.stall_after is not None:
                piece = piece[: self.stall_after - self.channel.bytes_sent]
            self.channel.bytes_sent += len(piece)
            self.request.write(piece)
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` for a single-range header, None if unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":
        length = int(m.group(2))
        if length == 0:
            return None
        return max(0, size - length), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        return None
    return start, min(end, size)


def _error(request: server.Request, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(
        {"errors": [{"code": code, "message": message, "detail": None}]}
    ).encode()


_BLOB_PATH = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")


class RegistryResource(resource.Resource):
    """Routes the few registry endpoints we serve."""

    isLeaf = True

    def __init__(
        self,
        size: int,
        digest: str,
        stall_after: int | None,
        events: EventLog,
        clock: IReactorTime,
        framing: str = "length",
    ) -> None:
        super().__init__()
        self.size = size
        self.digest = digest
        self.framing = framing
        self.stall_after = stall_after
        self.events = events
        self.clock = clock

    def render(self, request: server.Request) -> bytes | int:
        channel = request.channel
        assert isinstance(channel, CountingChannel)
        method = request.method.decode()
        path = request.path.decode()
        rng = request.getHeader(b"range")
        self.events.write(
            "request",
            conn=channel.conn_id,
            method=method,
            path=path,
            query=request.uri.decode().partition("?")[2] or None,
            range=rng.decode() if rng else None,
        )
        request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
        if method not in ("GET", "HEAD"):
            return _error(request, 405, "UNSUPPORTED", "method not allowed")
        if path in ("/v2/", "/v2"):
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        m = _BLOB_PATH.match(path)
        if not m:
            return _error(request, 404, "NAME_UNKNOWN", "not found")
        if m.group(2) != self.digest:
            return _error(request, 404, "BLOB_UNKNOWN", "blob unknown to registry")

        start, end = 0, self.size
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"docker-content-digest", self.digest.encode())
        request.setHeader(b"etag", f'"{self.digest}"'.encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        if rng:
            parsed = parse_range(rng.decode(), self.size)
            if parsed is None:
                request.setHeader(b"content-range", f"bytes */{self.size}".encode())
                return _error(request, 416, "RANGE_INVALID", "range not satisfiable")
            start, end = parsed
            request.setResponseCode(206)
            request.setHeader(
                b"content-range", f"bytes {start}-{end - 1}/{self.size}".encode()
            )
        if self.framing == "length":
            request.setHeader(b"content-length", str(end - start).encode())
        elif self.framing == "close":
            # An HTTP/1.0-style answer: no length, no chunks, the end of the
            # body is the end of the connection.  twisted.web only chunks
            # for HTTP/1.1, so answer as 1.0 and close when done.
            request.clientproto = b"HTTP/1.0"
            channel.persistent = False
            request.setHeader(b"connection", b"close")
        # framing "chunked": no Content-Length, twisted.web chunks the body.
        if method == "HEAD":
            return b""
        BodyProducer(
            request,
            channel,
            self.size,
            start,
            end,
            self.stall_after,
            self.events,
            self.clock,
        ).start()
        return server.NOT_DONE_YET


def main(argv: list[str] | None = None) -> None:
    """Compute the digest, listen on 127.0.0.1, print READY, run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--stall-after", type=int, default=None)
    parser.add_argument(
        "--framing",
        choices=("length", "chunked", "close"),
        default="length",
        help="body delimited by Content-Length, chunked, or connection close",
    )
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    digest = blob_digest(args.size)
    events = EventLog(args.events)
    CountingChannel.events = events
    # Imported here, not at the top: the tests import this module.
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    site = server.Site(
        RegistryResource(
            args.size, digest, args.stall_after, events, reactor, args.framing
        )
    )
    site.protocol = CountingChannel  # type: ignore[assignment]
    site.displayTracebacks = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    events.write("ready", port=args.port, size=args.size, digest=digest)
    print(f"READY port={args.port} size={args.size} digest={digest}", flush=True)
    reactor.run()


REPO = Path(__file__).resolve().parents[2]


class BlobServerProcess(ManagedProcess):
    """This module run as a child process on a free loopback port.

    Why a process: the tests kill it with SIGKILL and watch its connections
    from outside, exactly as they would a real upstream.
    """

    def __init__(
        self,
        workdir: Path,
        size: int,
        stall_after: int | None = None,
        name: str = "upstream",
        framing: str = "length",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.size = size
        name = f"{name}-{self.port}"  # several per test directory must not mix
        self.events_path = workdir / f"{name}.events.jsonl"
        argv = [
            sys.executable,
            "-m",
            "tests.support.blob_server",
            "--port",
            str(self.port),
            "--size",
            str(size),
            "--events",
            str(self.events_path),
        ]
        if stall_after is not None:
            argv += ["--stall-after", str(stall_after)]
        argv += ["--framing", framing]
        super().__init__(argv, workdir / f"{name}.log", cwd=REPO)
        try:
            self.wait_for_port(self.port, timeout=60)
            self.wait_for_log("READY ", timeout=30)
        except BaseException:
            self.stop()
            raise
        m = re.search(r"READY .*digest=(sha256:[0-9a-f]{64})", self.log_text())
        assert m, self.log_text()
        self.digest = m.group(1)

    def blob_path(self, name: str = "x") -> str:
        return f"/v2/{name}/blobs/{self.digest}"

    def events(self) -> list[dict[str, Any]]:
        """Every event so far (complete lines only)."""
        if not self.events_path.exists():
            return []
        text = self.events_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def blob_get_conns(self) -> set[int]:
        """Connections on which a GET for the blob arrived."""
        return {
            e["conn"]
            for e in self.events()
            if e["event"] == "request"
            and e["method"] == "GET"
            and e["path"].endswith(self.digest)
        }

    def dones(self) -> set[int]:
        """Connections on which a whole body was written."""
        return {e["conn"] for e in self.events() if e["event"] == "done"}

    def closes(self) -> dict[int, dict[str, Any]]:
        """Close events by connection id."""
        return {e["conn"]: e for e in self.events() if e["event"] == "close"}


if __name__ == "__main__":
    main(sys.argv[1:])
