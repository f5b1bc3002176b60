"""The disk threads as a Service: started and joined with the service tree."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactor

from docxy.cache.disk_pool import DiskPool


def test_the_service_starts_and_joins_its_threads() -> None:
    reactor = MemoryReactor()
    disk = DiskPool(reactor)
    disk.startService()
    threads = disk.threads()
    try:
        assert threads.started
    finally:
        disk.stopService()
    assert threads.joined
    assert reactor.triggers == {}  # the service tree, not the reactor, stops it


def test_outside_a_service_tree_the_reactor_stops_it() -> None:
    reactor = MemoryReactor()
    disk = DiskPool(reactor)
    threads = disk.threads()
    try:
        assert threads.started
        ((stop, _, _),) = reactor.triggers["during"]["shutdown"]
        stop()
        assert threads.joined
        stop()  # a second stop (service and reactor both) is harmless
    finally:
        disk.stopService()
