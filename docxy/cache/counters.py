"""Cache counters, kept in one object a metrics endpoint can read."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    """Plain integers the cache bumps; :mod:`docxy.metrics` exports them.

    Kept apart from prometheus-client so the cache and its tests need no
    metrics registry.
    """

    hits: int = 0
    misses: int = 0
    joined_fills: int = 0
    kernel_fills: int = 0
    bytes_from_upstream: int = 0
    bytes_served: int = 0
    stale_serves: int = 0
    digest_mismatches: int = 0
    denied: int = 0
    evictions: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
