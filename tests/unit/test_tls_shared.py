"""``acme:`` with workers: what the supervisor's manager publishes, and a
worker's follower picking up stored certificates (on a ``task.Clock``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from docxy.tls.certs import placeholder
from docxy.tls.http01 import Http01Store
from docxy.tls.shared import CertificateFollower, PublishedChallenges
from docxy.tls.spec import AcmeSpec
from docxy.tls.store import AcmeStore

NAME = "a.example"


def test_published_challenges_round_trip(tmp_path: Path) -> None:
    published = PublishedChallenges(tmp_path)
    published.clear()
    assert published.token("t0k3n") is None and published.alpn(NAME) is None
    pair = placeholder([NAME])
    published.add_token("t0k3n", "t0k3n.thumb")
    published.add_alpn(NAME, pair)
    assert published.token("t0k3n") == b"t0k3n.thumb"
    found = published.alpn(NAME)
    assert found is not None and found.serial == pair.serial
    assert oct((tmp_path / "challenges").stat().st_mode & 0o777) == "0o700"
    published.remove_token("t0k3n")
    published.remove_alpn(NAME)
    assert published.token("t0k3n") is None and published.alpn(NAME) is None
    published.add_token("left", "behind")
    published.clear()  # a new manager: nothing is pending
    assert published.token("left") is None


def test_a_challenge_name_never_leaves_the_directory(tmp_path: Path) -> None:
    published = PublishedChallenges(tmp_path)
    published.clear()
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            published.add_token(bad, "k")
        assert published.token(bad) is None


def following(tmp_path: Path) -> tuple[AcmeStore, Clock, CertificateFollower]:
    """A state directory's store, and a follower of it on a clock."""
    spec = AcmeSpec(state_dir=tmp_path, domains=(NAME,))
    store = AcmeStore(spec.state_dir, spec.directory)
    store.prepare()
    clock = Clock()
    return store, clock, CertificateFollower(clock, spec, Http01Store(), interval=2.0)


def test_a_follower_serves_each_stored_certificate_from_its_next_look(
    tmp_path: Path,
) -> None:
    store, clock, follower = following(tmp_path)
    installed: list[int] = []
    real = follower.contexts.install

    def install(name: str, pair: object) -> None:
        installed.append(pair.serial)  # type: ignore[attr-defined]
        real(name, pair)  # type: ignore[arg-type]

    follower.contexts.install = install  # type: ignore[method-assign]
    loads: list[str] = []
    real_load = follower.store.load

    def load(name: str) -> object:
        loads.append(name)
        return real_load(name)

    follower.store.load = load  # type: ignore[method-assign,assignment]
    follower.start()
    placeholder_serial = follower.contexts.serial(NAME)
    assert installed == []  # nothing stored yet: the placeholder

    first = placeholder([NAME])
    store.save(NAME, first)
    assert follower.contexts.serial(NAME) == placeholder_serial  # until it looks
    clock.advance(2.0)
    assert follower.contexts.serial(NAME) == first.serial
    clock.advance(2.0)
    assert installed == [first.serial] and loads == [NAME]  # unchanged: not read

    renewed = placeholder([NAME])
    store.save(NAME, renewed)
    clock.advance(2.0)
    assert follower.contexts.serial(NAME) == renewed.serial
    assert installed == [first.serial, renewed.serial]
    follower.stop()
    assert not clock.getDelayedCalls()


def test_a_follower_answers_the_http01_tokens_the_supervisor_published(
    tmp_path: Path,
) -> None:
    spec = AcmeSpec(state_dir=tmp_path, domains=(NAME,))
    http01 = Http01Store()
    follower = CertificateFollower(Clock(), spec, http01)
    follower.published.clear()
    assert http01.get("tok") is None
    follower.published.add_token("tok", "tok.thumb")
    assert http01.get("tok") == b"tok.thumb"


def test_a_follower_tries_a_certificate_it_could_not_read_at_its_next_look(
    tmp_path: Path,
) -> None:
    store, clock, follower = following(tmp_path)
    stored = placeholder([NAME])
    store.save(NAME, stored)
    real_load = follower.store.load
    failures = [OSError(24, "Too many open files")]

    def load(name: str) -> object:
        if failures:
            raise failures.pop()
        return real_load(name)

    follower.store.load = load  # type: ignore[method-assign,assignment]
    follower.start()  # the first look fails
    assert follower.contexts.serial(NAME) != stored.serial
    clock.advance(2.0)  # can fail: a look that raised stopped the loop
    assert follower.contexts.serial(NAME) == stored.serial
    follower.stop()


def test_a_worker_adopts_an_acme_port_on_systemd_without_its_socket() -> None:
    """The wrapped endpoint is the supervisor's: a worker has no
    LISTEN_FDS, and must not need them."""
    import os
    import socket

    from twisted.internet.testing import MemoryReactorClock

    from docxy.shared_ports import SharedSocket, adopt, shareable
    from docxy.tls.shared import FollowerEndpoint

    port = "acme:/tmp/docxy-never:systemd:domain=INET:index=0:domains=a.example"
    assert shareable(port)
    assert "LISTEN_FDS" not in os.environ
    shared = SharedSocket(fd=3, family=int(socket.AF_INET))
    endpoint = adopt(MemoryReactorClock(), port, shared)
    assert isinstance(endpoint, FollowerEndpoint)
    assert endpoint.follower.spec.domains == ("a.example",)


def test_a_listener_stops_its_certificate_keeper_once_with_it() -> None:
    from twisted.internet import defer

    from docxy.tls.ports import PortWithKeeper

    class Port:
        stopped = 0

        def stopListening(self) -> defer.Deferred[None]:
            self.stopped += 1
            return defer.succeed(None)

    kept = defer.Deferred[None]()
    calls: list[int] = []

    def stop_keeper() -> defer.Deferred[None]:
        calls.append(1)
        return kept

    port = Port()
    listener = PortWithKeeper(port, stop_keeper)  # type: ignore[arg-type]
    done = listener.stopListening()
    assert done is not None and not done.called  # waits for the keeper too
    kept.callback(None)
    assert done.called and calls == [1] and port.stopped == 1
    listener.stopListening()
    assert calls == [1]  # the keeper is stopped once
