"""Recently served manifests in memory, bounded by their total bytes.

A manifest is immutable by its digest, so a copy in memory never goes
stale and needs no invalidation (each worker process keeps its own); a
hit costs no disk read and no hash on the reactor thread.
"""

from __future__ import annotations

from collections import OrderedDict

# The default bound: thousands of typical manifests (a few KiB each), at
# least eight of the largest (MAX_MANIFEST, 4 MiB).
MANIFEST_MEMORY = 32 * 1024 * 1024


class BytesLRU:
    """(body, content type) by digest; the least recently used go first
    once the bodies and types together exceed ``max_bytes``."""

    def __init__(self, max_bytes: int = MANIFEST_MEMORY) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self._items: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, digest: object) -> bool:
        return digest in self._items

    def get(self, digest: str) -> tuple[bytes, bytes] | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, digest: str, body: bytes, content_type: bytes) -> None:
        """Keep this item (unless it alone exceeds the bound), evicting the
        least recently used until the total fits."""
        size = len(body) + len(content_type)
        old = self._items.pop(digest, None)
        if old is not None:
            self.total -= len(old[0]) + len(old[1])
        if size > self.max_bytes:
            return
        self._items[digest] = (body, content_type)
        self.total += size
        while self.total > self.max_bytes:
            _, (b, t) = self._items.popitem(last=False)
            self.total -= len(b) + len(t)
