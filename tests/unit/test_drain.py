"""Graceful shutdown in memory: wait for requests and fills, up to a deadline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from docxy.drain import Drain
from docxy.probes import Readiness


@dataclass
class FakeFill:
    finished: defer.Deferred[None] = field(default_factory=defer.Deferred)


@dataclass
class FakeBlobs:
    fills: dict[str, FakeFill] = field(default_factory=dict)


@dataclass
class FakeCache:
    blobs: FakeBlobs = field(default_factory=FakeBlobs)


class FakeSite:
    """What Drain reads of DocxySite: active requests, idle(), readiness, cache."""

    def __init__(self) -> None:
        self.active: set[object] = set()
        self.readiness = Readiness()
        self.cache = FakeCache()
        self._idle: list[defer.Deferred[None]] = []
        self.closing: list[defer.Deferred[None]] = []
        self.channels: set[object] = set()

    def close_connections(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.closing.append(d)
        return d

    def idle(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.active:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def end(self, request: object) -> None:
        self.active.discard(request)
        if not self.active:
            for d in self._idle:
                d.callback(None)
            self._idle = []


def drain(site: FakeSite, timeout: float = 30) -> tuple[Drain, task.Clock]:
    clock = task.Clock()
    service: Any = site
    return Drain(service, timeout, clock), clock


def test_nothing_in_flight_stops_at_once_and_turns_readiness_off() -> None:
    site = FakeSite()
    service, _ = drain(site)
    done = service.stopService()
    assert site.readiness.problem() == "shutting down"
    # Connections are closed gracefully first (their buffers flushed).
    assert not done.called
    site.closing.pop().callback(None)
    assert done.called


def test_waits_for_requests_and_fills() -> None:
    site = FakeSite()
    site.active.add("request")
    fill = site.cache.blobs.fills["sha256:x"] = FakeFill()
    service, clock = drain(site)
    done = service.stopService()
    clock.advance(10)
    site.end("request")
    assert not done.called  # the fill still runs
    del site.cache.blobs.fills["sha256:x"]
    fill.finished.callback(None)
    assert not site.closing[0].called
    site.closing[0].callback(None)
    assert done.called
    assert fill.finished.result is None  # its own result left alone


def test_the_deadline_gives_up_without_an_error() -> None:
    site = FakeSite()
    site.active.add("request")
    service, clock = drain(site, timeout=5)
    done = service.stopService()
    clock.advance(4.9)
    assert not done.called
    clock.advance(0.2)
    assert done.called
    failures: list[object] = []
    done.addErrback(failures.append)
    assert failures == []
