"""Cache hits on plain TCP through ``sendfile(2)``, with real sockets.

Docxy's real Site on 127.0.0.1 in front of a scripted upstream; clients are
twisted's Agent or raw sockets that read when the test says. What is
checked: the body and a Range are exact and went out by sendfile; a client
that leaves mid-transfer leaves no descriptor behind; a client that reads
nothing holds nothing in Docxy's memory (the bytes wait in the file); the
access log and the counters count the bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from docxy.cache.kernel_sender import KernelSender
from tests.support.digests import sha256_digest

from .blob_upstream import BLOB, CLIENT_PATH, DIGEST, PATH, Blob
from .harness import FakeUpstream, Harness, drain, raw_get, read_whole, start, until

BIG = os.urandom(24 * 1024 * 1024)
BIG_DIGEST = sha256_digest(BIG)
BIG_PATH = f"/v2/library/alpine/blobs/{BIG_DIGEST}"
BIG_CLIENT_PATH = f"/v2/alpine/blobs/{BIG_DIGEST}"


@pytest_twisted.async_yield_fixture
async def docxy(tmp_path: Path) -> AsyncIterator[Harness]:
    upstream = FakeUpstream()
    upstream.routes[PATH] = Blob()
    upstream.routes[BIG_PATH.encode()] = Blob(BIG)
    harness = await start(upstream, {"cache-dir": str(tmp_path / "cache")})
    yield harness
    await harness.stop()


@pytest.fixture
def sendfiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The byte count of every sendfile call Docxy makes."""
    counts: list[int] = []
    real = os.sendfile

    def counting(out: int, fd: int, offset: int, count: int) -> int:
        sent = real(out, fd, offset, count)
        counts.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    yield counts


@pytest.fixture
def senders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[KernelSender]]:
    started: list[KernelSender] = []
    real = KernelSender.start

    def start(self: KernelSender) -> None:
        started.append(self)
        real(self)

    monkeypatch.setattr(KernelSender, "start", start)
    yield started


async def cached(docxy: Harness, path: str, digest: str) -> None:
    await docxy.request(b"GET", path)
    await until(lambda: digest in docxy.cache.blobs.store.entries, "the fill")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def links() -> list[str]:
    """What this process's descriptors point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


@pytest_twisted.ensureDeferred
async def test_a_hit_and_a_range_go_out_by_sendfile_with_their_bytes_counted(
    docxy: Harness, sendfiles: list[int], access_events: list[dict[str, Any]]
) -> None:
    await cached(docxy, CLIENT_PATH, DIGEST)
    counters = docxy.cache.blobs.counters
    # The miss went upstream socket -> file in the kernel, then by sendfile
    # from the growing file (all but what the first chunks brought).
    assert counters.kernel_fills == 1
    assert 0 < sum(sendfiles) <= len(BLOB)
    sendfiles.clear()
    served = counters.bytes_served
    access_events.clear()

    whole = await docxy.request(b"GET", CLIENT_PATH)
    assert whole.code == 200 and whole.body == BLOB
    assert sum(sendfiles) == len(BLOB)
    part = await docxy.request(b"GET", CLIENT_PATH, {b"range": [b"bytes=1000-1048575"]})
    assert (part.code, part.body) == (206, BLOB[1000:1048576])
    assert sum(sendfiles) == len(BLOB) + len(part.body)

    assert [(e["status"], e["bytes"]) for e in access_events] == [
        (200, len(BLOB)),
        (206, len(part.body)),
    ]
    assert counters.bytes_served - served == len(BLOB) + len(part.body)
    metrics = docxy.site.metrics
    if metrics is not None:
        text = metrics.render().decode()
        assert "docxy_response_bytes_total" in text


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_transfer_leaves_no_descriptor(
    docxy: Harness, senders: list[KernelSender]
) -> None:
    await cached(docxy, BIG_CLIENT_PATH, BIG_DIGEST)
    senders.clear()  # the miss's own (a kernel fill's client reads the file)
    entry = docxy.cache.blobs.store.entries[BIG_DIGEST]
    before = open_fds()
    assert str(docxy.cache.blobs.store.path(BIG_DIGEST)) not in links()
    client = raw_get(docxy, BIG_CLIENT_PATH, rcvbuf=64 * 1024)
    received = bytearray()

    def some_arrived() -> bool:
        drain(client, received)
        return len(received) > 1024 * 1024

    await until(some_arrived, "the first MiB")
    assert entry.readers == 1 and senders and senders[0].fd >= 0
    assert str(docxy.cache.blobs.store.path(BIG_DIGEST)) in links()  # can fail
    client.close()
    await until(lambda: senders[0].fd == -1, "the sender to close its file")
    await until(lambda: open_fds() <= before, "every descriptor closed")
    assert str(docxy.cache.blobs.store.path(BIG_DIGEST)) not in links()
    assert entry.readers == 0
    assert len(received) < len(BIG)


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_holds_nothing_in_memory(
    docxy: Harness, senders: list[KernelSender]
) -> None:
    await cached(docxy, BIG_CLIENT_PATH, BIG_DIGEST)
    senders.clear()  # the miss's own
    client = raw_get(docxy, BIG_CLIENT_PATH, rcvbuf=64 * 1024)
    try:
        await until(lambda: bool(senders), "the hit to start")
        sender = senders[0]
        await until(lambda: sender.sent > 0 and sender.waiting, "the socket to be full")
        transport: Any = sender.transport
        buffered = len(transport.dataBuffer) - transport.offset
        assert buffered + transport._tempDataLen == 0  # nothing in user space
        assert sender.sent < len(BIG)  # the rest waits in the file

        head, body = await read_whole(client, BIG)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == BIG
    finally:
        client.close()
