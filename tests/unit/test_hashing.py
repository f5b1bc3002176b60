"""A fill's hash thread: how much may wait for it before the upstream pauses.

Chunks received through Python wait in memory, so few may; bytes the
kernel wrote wait in the page cache, so more may (the kernel keeps
reading while the thread waits for a core). The thread runs when the
test says (``QueuedHashThread``).
"""

from __future__ import annotations

from pathlib import Path

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
    h = hashing(heard, thread, max_queued=256, max_lag=4096)
    h.update(BODY[:256])
    assert heard == []
    h.update(BODY[256:257])
    assert heard == ["full"]
    thread.threads.run()
    assert heard == ["full", "room"]


def test_bytes_the_kernel_wrote_may_wait_up_to_max_lag(tmp_path: Path) -> None:
    path = tmp_path / "fill"
    path.write_bytes(BODY)
    heard: list[str] = []
    thread = QueuedHashThread()
    with open(path, "r+b", buffering=0) as f:
        h = hashing(heard, thread, file=f, max_queued=256, max_lag=768)
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
