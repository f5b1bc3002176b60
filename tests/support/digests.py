"""``sha256:<hex>`` of bytes or of a file, computed apart from Docxy's code.

A test checks Docxy's digests against these, so they must not be Docxy's
own (``docxy.oci.Digest``): a bug there would agree with itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file, read in pieces (some test blobs are 200 MiB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
