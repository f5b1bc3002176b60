"""A fill's hash thread: what it is handed, and how much may wait for it.

Chunks received through Python are handed over in batches (one job per
reactor turn or per :data:`~docxy.cache.hashing.BATCH`) and wait in
memory, so few may; bytes the kernel wrote wait in the page cache, so
more may (the kernel keeps reading while the thread waits for a core).
The thread runs when the test says (``QueuedHashThread``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from docxy.cache import hashing as hashing_module
from docxy.cache.hashing import BackgroundHash
from docxy.oci import Digest
from tests.support.digests import sha256_digest
from tests.support.memory import QueuedHashThread, result

BODY = bytes(range(256)) * 4  # 1024 bytes


def hashing(
    heard: list[str], thread: QueuedHashThread, **kwargs: object
) -> BackgroundHash:
    return BackgroundHash(
        Digest.parse(sha256_digest(BODY)),
        thread,  # type: ignore[arg-type]
        lambda: heard.append("full"),
        lambda: heard.append("room"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_chunks_in_memory_pause_the_upstream_past_max_queued() -> None:
    heard: list[str] = []
    thread = QueuedHashThread()
    clock = Clock()
    h = hashing(heard, thread, max_queued=256, max_lag=4096, clock=clock)
    h.update(BODY[:256])
    assert heard == []
    h.update(BODY[256:257])
    assert heard == ["full"]
    clock.advance(0)  # the end of the reactor's turn: the batch goes
    thread.threads.run()
    assert heard == ["full", "room"]


def test_bytes_the_kernel_wrote_may_wait_up_to_max_lag(tmp_path: Path) -> None:
    path = tmp_path / "fill"
    path.write_bytes(BODY)
    heard: list[str] = []
    thread = QueuedHashThread()
    with open(path, "r+b", buffering=0) as f:
        h = hashing(heard, thread, file=f, max_queued=256, max_lag=768, clock=Clock())
        h.hash_written(512)
        h.hash_written(256)
        assert heard == []  # 768 wait: more than max_queued, not than max_lag
        h.hash_written(256)
        assert heard == ["full"]
        thread.threads.run()
        assert heard == ["full", "room"]
        d = h.matches()
        thread.threads.run()
        assert result(d) is True


def test_chunks_of_one_reactor_turn_are_one_job_for_the_thread(
    tmp_path: Path,
) -> None:
    """A TLS upstream delivers a 16 KiB record per chunk: handed to the
    thread one by one, their hand-offs cost a fifth of the reactor thread."""
    path = tmp_path / "fill"
    path.touch()
    thread, clock = QueuedHashThread(), Clock()
    with open(path, "r+b", buffering=0) as f:
        h = hashing([], thread, file=f, clock=clock)
        for n in range(8):
            h.update(BODY[n * 128 : (n + 1) * 128])
        assert thread.threads.queue == []
        clock.advance(0)  # the turn ends
        assert len(thread.threads.queue) == 1
        thread.threads.run()
        assert (h.on_disk, path.read_bytes()) == (len(BODY), BODY)
        d = h.matches()
        thread.threads.run()
        assert result(d) is True


def test_a_full_batch_goes_at_once_and_waiting_for_the_thread_sends_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing_module, "BATCH", 512)
    path = tmp_path / "fill"
    path.touch()
    thread, clock = QueuedHashThread(), Clock()
    with open(path, "r+b", buffering=0) as f:
        h = hashing([], thread, file=f, clock=clock)
        h.update(BODY[:512])
        assert len(thread.threads.queue) == 1  # a batch: no waiting for the turn
        h.update(BODY[512:600])
        caught_up = h.caught_up()  # a reader waits: what is held goes first
        thread.threads.run()
        assert result(caught_up) is None
        assert h.on_disk == 600


def test_partial_pwritev_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev

    def at_most_100(fd: int, buffers: list[memoryview], offset: int) -> int:
        room = 100
        head = []
        for view in buffers:
            head.append(view[:room])
            room -= len(head[-1])
            if room == 0:
                break
        return real(fd, head, offset)

    monkeypatch.setattr(os, "pwritev", at_most_100)
    path = tmp_path / "fill"
    path.touch()
    thread = QueuedHashThread()
    with open(path, "r+b", buffering=0) as f:
        h = hashing([], thread, file=f, clock=Clock())
        for n in range(4):
            h.update(BODY[n * 256 : (n + 1) * 256])
        d = h.matches()
        thread.threads.run()
        assert result(d) is True
    assert path.read_bytes() == BODY
