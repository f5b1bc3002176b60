"""One run of some upstream work per key, however many callers want it.

A token-realm discovery or the upstream request that opens a blob fill
must run once even when many clients ask at the same moment, and a client
that leaves must not cancel the work the others wait for.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Concurrent callers for one key share a single run of its coroutine.

    Each caller waits on its own Deferred, so cancelling one (its client
    went away) never cancels the work or another caller's wait. The result
    (or failure) goes to every caller still waiting, the one that started
    the work last. A result whose starter is gone is handed to
    ``unclaimed`` (say, to discard a response body nobody will read), a
    failure nobody waits for any more is logged. Once
    delivered, the next call for the key starts a new run.
    """

    def __init__(
        self, unclaimed: Callable[[T], object] | None = None, what: str = "work"
    ) -> None:
        self.what = what  # for the log: "realm discovery", "blob fill", ...
        self._unclaimed = unclaimed
        self._flights: dict[K, list[defer.Deferred[T]]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def wait(
        self, key: K, start: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[defer.Deferred[T], bool]:
        """A Deferred for ``key``'s result, and whether this call started the run."""
        waiter: defer.Deferred[T] = defer.Deferred()
        waiters = self._flights.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter, False
        self._flights[key] = [waiter]
        defer.Deferred.fromCoroutine(start()).addBoth(self._deliver, key)
        return waiter, True

    def _deliver(self, result: T | Failure, key: K) -> None:
        starter, *others = self._flights.pop(key)
        taken = [_give(waiter, result) for waiter in others]
        taken.append(_give(starter, result))
        if isinstance(result, Failure):
            if not any(taken):  # everyone left: say so, never swallow it
                log.info(
                    "{what} failed with nobody waiting: {why}",
                    what=self.what,
                    why=result.getErrorMessage(),
                )
        elif not taken[-1] and self._unclaimed is not None:
            self._unclaimed(result)


async def shared(waiter: defer.Deferred[Any], kind: type[T]) -> T | None:
    """What a caller that did not start the run takes of it: a ``kind``, or None.

    A failure, or any other result (say, the upstream's 401 or 404 to the
    starter's credentials), is the starter's: the others only learn there
    is nothing to share, and ask for themselves. Their own cancellation
    (their client left) is still theirs.
    """
    try:
        outcome = await waiter
    except defer.CancelledError:
        raise
    except Exception:
        return None
    return outcome if isinstance(outcome, kind) else None


def _give(waiter: defer.Deferred[T], result: T | Failure) -> bool:
    """Fire ``waiter`` unless it was cancelled; whether it took the result."""
    if waiter.called:
        return False
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)
    return True
