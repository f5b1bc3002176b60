"""SingleFlight: one run per key, each caller with its own cancellable wait."""

from __future__ import annotations

from typing import cast

import pytest
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from docxy import singleflight
from docxy.singleflight import SingleFlight


class Work:
    """A run whose end the test decides."""

    def __init__(self) -> None:
        self.runs = 0
        self.pending: list[defer.Deferred[str]] = []

    async def __call__(self) -> str:
        self.runs += 1
        d: defer.Deferred[str] = defer.Deferred()
        self.pending.append(d)
        return await d


def test_concurrent_callers_share_one_run_and_the_starter_is_told() -> None:
    work, flights = Work(), SingleFlight[str, str]()
    first, started = flights.wait("k", work)
    second, joined = flights.wait("k", work)
    assert (started, joined) == (True, False)
    assert "k" in flights
    work.pending[0].callback("result")
    assert work.runs == 1
    assert first.result == second.result == "result"
    assert "k" not in flights
    _, started = flights.wait("k", work)
    assert started and work.runs == 2


def test_a_cancelled_wait_cancels_neither_the_run_nor_the_others() -> None:
    work, unclaimed = Work(), list[str]()
    flights = SingleFlight[str, str](unclaimed.append)
    first, _ = flights.wait("k", work)
    second, _ = flights.wait("k", work)
    first.cancel()
    first.addErrback(lambda f: f.trap(defer.CancelledError))
    assert not work.pending[0].called
    work.pending[0].callback("result")
    assert second.result == "result"
    assert unclaimed == ["result"]  # its starter is gone: handed over


def test_a_failure_reaches_every_waiter_and_is_never_unclaimed() -> None:
    work, unclaimed = Work(), list[str]()
    flights = SingleFlight[str, str](unclaimed.append)
    first, _ = flights.wait("k", work)
    second, _ = flights.wait("k", work)
    work.pending[0].errback(ValueError("upstream said no"))
    for waiter in (first, second):
        seen: list[Failure] = []
        waiter.addErrback(seen.append)
        assert seen[0].check(ValueError)
    assert unclaimed == []


def test_keys_are_independent() -> None:
    work, flights = Work(), SingleFlight[str, str]()
    a, _ = flights.wait("a", work)
    b, started = flights.wait("b", work)
    assert started and work.runs == 2
    work.pending[1].callback("b")
    assert b.result == "b" and not a.called


def test_a_failure_nobody_waits_for_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, object]] = []
    observer = cast(ILogObserver, events.append)
    monkeypatch.setattr(singleflight, "log", Logger(observer=observer))
    work, flights = Work(), SingleFlight[str, str](what="test work")
    waiter, _ = flights.wait("k", work)
    waiter.cancel()
    waiter.addErrback(lambda f: f.trap(defer.CancelledError))
    work.pending[0].errback(ValueError("upstream said no"))
    assert [(e["what"], e["why"]) for e in events] == [
        ("test work", "upstream said no")
    ]
