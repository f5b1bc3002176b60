"""The allocator policy Docxy sets at start (docxy/malloc_policy.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from docxy.malloc_policy import keep_large_buffers


def test_glibc_keeps_large_buffers_in_a_fresh_process() -> None:
    # Its own process: the policy is per process and not undone.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from docxy.malloc_policy import keep_large_buffers as k; print(k())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "True"  # this machine's Python runs on glibc


def test_an_operators_malloc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert keep_large_buffers() is False
