"""The upstream's pull budget: watched, warned about, and respected while spent.

Docker Hub counts pulls per account (or per source address, for anonymous
pulls) and says how many are left in ``RateLimit-Limit`` /
``RateLimit-Remaining`` (``100;w=21600``), naming who was counted in
``Docker-RateLimit-Source``. Docxy reads them from every upstream answer
into a gauge per upstream and account, logs one line when the remaining
budget falls below ``ratelimit-warning``, and after a 429 stops asking that
upstream for that account until ``Retry-After`` has passed: then one
request goes as a probe, every other waits for its answer. Clients meanwhile
get the 429 at once (and cached content keeps flowing, :mod:`docxy.cache`).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from .ratelimit import RateLimitedError, kept_headers_of

if TYPE_CHECKING:
    from .metrics import Metrics

log = Logger()

_NUMBER = re.compile(rb"^\s*(\d+)")
# A 429 without a usable Retry-After: ask again after this long.
DEFAULT_BACKOFF = 60.0
# The labels of requests Docxy did not make with an account of its own.
ANONYMOUS = "anonymous"
CLIENT = "client"


@dataclass
class _Gate:
    until: float
    headers: tuple[tuple[bytes, bytes], ...]
    probing: bool = False


class PullBudget:
    """Per (upstream, account): the last budget seen and the 429 gate."""

    def __init__(
        self,
        clock: IReactorTime,
        name_of: Callable[[str], str],
        warn_below: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.name_of = name_of
        self.warn_below = warn_below
        self.metrics = metrics
        # Authorization values Docxy made itself -> the account they spend.
        self._accounts: dict[bytes, str] = {}
        self._gates: dict[tuple[str, str], _Gate] = {}
        self._warned: set[tuple[str, str]] = set()

    def learn(self, authorization: bytes, account: str) -> None:
        """Requests carrying ``authorization`` spend ``account``'s budget."""
        self._accounts[authorization] = account
        while len(self._accounts) > 10_000:
            self._accounts.pop(next(iter(self._accounts)))

    def account_of(self, headers: Headers) -> str:
        values = headers.getRawHeaders(b"authorization")
        if not values:
            return ANONYMOUS
        return self._accounts.get(values[0], CLIENT)

    # --- before and after each upstream request -----------------------------

    def check(self, url: str, account: str) -> None:
        """Raise the 429 at once while the upstream's Retry-After runs."""
        if account == CLIENT:
            return  # a client's own credentials: its own budget, its own retries
        key = (self.name_of(url), account)
        gate = self._gates.get(key)
        if gate is None:
            return
        left = gate.until - self.clock.seconds()
        if left <= 0 and not gate.probing:
            gate.probing = True  # this request is the probe
            return
        wait = max(int(left + 0.999), 1)
        kept = tuple(h for h in gate.headers if h[0].lower() != b"retry-after")
        raise RateLimitedError(headers=((b"Retry-After", b"%d" % wait), *kept))

    def observe(self, url: str, account: str, code: int, headers: Headers) -> None:
        name = self.name_of(url)
        key = (name, account)
        if code == 429 and account != CLIENT:
            self._close(key, headers)
        else:
            self._gates.pop(key, None)
        limit = _number(headers.getRawHeaders(b"ratelimit-limit"))
        remaining = _number(headers.getRawHeaders(b"ratelimit-remaining"))
        if self.metrics is not None:
            if limit is not None:
                self.metrics.ratelimit_limit.labels(name, account).set(limit)
            if remaining is not None:
                self.metrics.ratelimit_remaining.labels(name, account).set(remaining)
        if remaining is None or self.warn_below is None:
            return
        if remaining >= self.warn_below:
            self._warned.discard(key)
        elif key not in self._warned:
            self._warned.add(key)
            source = (headers.getRawHeaders(b"docker-ratelimit-source") or [b"-"])[0]
            log.warn(
                "pull budget of {upstream} for {account}: {remaining} of {limit} "
                "left (counted for {source}), below ratelimit-warning {threshold}",
                upstream=name,
                account=account,
                remaining=remaining,
                limit=limit if limit is not None else "?",
                source=source.decode("latin-1")[:100],
                threshold=self.warn_below,
            )

    def failed(self, url: str, account: str) -> None:
        """A request (perhaps the probe) got no answer: the next one probes."""
        gate = self._gates.get((self.name_of(url), account))
        if gate is not None:
            gate.probing = False

    def _close(self, key: tuple[str, str], headers: Headers) -> None:
        kept = kept_headers_of(headers)
        wait = _retry_after(headers, self.clock.seconds())
        if key not in self._gates:
            log.warn(
                "{upstream} answered 429 for {account}: not asking it again for "
                "{wait:.0f} s (one probe then)",
                upstream=key[0],
                account=key[1],
                wait=wait,
            )
        self._gates[key] = _Gate(self.clock.seconds() + wait, kept)


def _number(values: Sequence[bytes] | None) -> int | None:
    """``100;w=21600`` -> 100."""
    if not values:
        return None
    match = _NUMBER.match(values[0])
    return int(match.group(1)) if match else None


def _retry_after(headers: Headers, now: float) -> float:
    value = (headers.getRawHeaders(b"retry-after") or [b""])[0].strip()
    if value.isdigit():
        return max(float(value), 1.0)
    try:
        when = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError):
        return DEFAULT_BACKOFF
    return max(when.timestamp() - now, 1.0)
