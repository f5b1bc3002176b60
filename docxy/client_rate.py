"""A request rate per client: token buckets by account, else address.

Off by default. On a shared mirror one greedy client (a CI job pulling in
a loop) must not use up the upstream's budget or the mirror's capacity for
everyone else: past its burst, a client gets ``429 TOOMANYREQUESTS`` with a
``Retry-After`` until its bucket refills at ``client-rate`` per second.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from .errors import RegistryError, too_many_requests

MAX_CLIENTS = 100_000


class ClientRate:
    """One token bucket per client key; the oldest idle buckets are dropped."""

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> RegistryError | None:
        """Spend one request of ``key``'s budget, or the 429 if none is left."""
        now = self.clock.seconds()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            return too_many_requests(
                "too many requests from this client: slow down",
                {"retry_after": wait},
                ((b"Retry-After", b"%d" % wait),),
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return None
