"""One cache directory, several worker processes: locks and views, in memory.

Two BlobStores on one directory stand for two workers (flock locks belong
to open files, so two descriptors in one process contend as two processes
do). The end-to-end behaviour with real processes: test_workers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from docxy.cache.blob_store import BlobStore
from docxy.cache.directory import EVICT_LOCK_NAME, turn
from docxy.cache.fill import FillState
from docxy.cache.fill_lock import FillClaim, RemoteFill, clean_temp
from docxy.cache.manifest_claim import ManifestClaims
from docxy.config import ConfigError, build_config
from tests.support.digests import sha256_digest
from tests.unit.test_cache_store import put

DATA = b"x" * 1000
DIGEST = sha256_digest(DATA)


def test_a_blob_one_worker_added_is_found_by_the_other(tmp_path: Path) -> None:
    one, two = BlobStore(tmp_path, 10_000), BlobStore(tmp_path, 10_000)
    digest = put(one, b"a" * 100)
    assert digest not in two.entries
    entry = two.get(digest)
    assert entry is not None and entry.size == 100
    assert two.total == 100


def test_a_rescan_takes_in_the_others_blobs_and_keeps_the_bound_for_all(
    tmp_path: Path,
) -> None:
    one, two = BlobStore(tmp_path, 250), BlobStore(tmp_path, 250)
    old = put(one, b"o" * 100, last_used=1000.0)
    new = put(two, b"n" * 100, last_used=2000.0)
    third = put(one, b"t" * 100)  # 300 bytes on disk; each saw 200
    assert one.path(old).exists()
    two.refresh(two.scan())
    assert not one.path(old).exists()  # least recently used of both
    assert two.path(new).exists() and two.path(third).exists()
    one.refresh(one.scan())
    assert set(one.entries) == {new, third} and one.total == 200


def test_one_eviction_at_a_time(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 150)
    with turn(tmp_path, EVICT_LOCK_NAME) as mine:
        assert mine
        first = put(store, b"1" * 100)
        second = put(store, b"2" * 100)  # over the bound, but not our turn
        assert store.path(first).exists() and store.path(second).exists()
    store.evict()
    assert store.total <= 150


def test_a_fill_claimed_by_one_worker_is_watched_by_the_other(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 10_000)
    claim = FillClaim.take(store.temp_path(DIGEST))
    assert isinstance(claim, FillClaim)
    other = FillClaim.take(store.temp_path(DIGEST))
    assert isinstance(other, int)  # the other worker's file: join it
    clock = Clock()
    remote = RemoteFill(store, DIGEST, other, clock)
    assert not remote.ready.called
    claim.announce(len(DATA))
    with open(claim.path, "wb") as f:  # what the filling worker writes
        f.write(DATA[:400])
    clock.advance(1)
    assert remote.ready.called and remote.length == len(DATA)
    assert remote.on_disk == 400 and remote.state is FillState.FILLING
    with open(claim.path, "ab") as f:
        f.write(DATA[400:])
    store.add(DIGEST, claim.path)  # verified and renamed
    claim.release()
    assert list(store.tmp.iterdir()) == []
    clock.advance(1)
    assert remote.state is FillState.DONE and remote.finished.called
    assert remote.entry is not None and remote.entry.size == len(DATA)


def test_a_dead_fill_is_a_failure_to_its_watchers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, 10_000)
    claim = FillClaim.take(store.temp_path(DIGEST))
    assert isinstance(claim, FillClaim)
    clock = Clock()
    remote = RemoteFill(store, DIGEST, os.open(claim.path, os.O_RDONLY), clock)
    # Never the watcher's own lock: it sees a holder until the holder is gone.
    os.close(claim.fd)  # what the kernel does when the filling worker dies
    clock.advance(1)
    assert remote.state is FillState.FAILED
    assert claim.path.exists()  # a dead fill's leftover ...
    again = FillClaim.take(claim.path)
    assert isinstance(again, FillClaim)  # ... that the next fill claims
    again.release()


def watched(tmp_path: Path) -> tuple[FillClaim, Clock, RemoteFill]:
    """One worker's claim, and the other's watcher (5 s without news: stalled)."""
    store = BlobStore(tmp_path, 10_000)
    claim = FillClaim.take(store.temp_path(DIGEST))
    assert isinstance(claim, FillClaim)
    clock = Clock()
    fd = os.open(claim.path, os.O_RDONLY)
    return claim, clock, RemoteFill(store, DIGEST, fd, clock, stall=5)


def test_a_fill_whose_holder_stopped_before_a_byte_fails_over_to_upstream(
    tmp_path: Path,
) -> None:
    # The filling worker was stopped (SIGSTOP, hung) after it claimed the
    # fill: it keeps the lock but neither announces nor writes. The other
    # worker's clients waited for as long as it stayed stopped.
    claim, clock, remote = watched(tmp_path)
    clock.pump([1] * 4)
    assert not remote.ready.called
    clock.pump([1] * 2)
    assert remote.ready.called and remote.finished.called
    assert remote.state is FillState.FAILED and remote.resume_upstream
    claim.release()


def test_a_fill_that_stops_growing_hands_its_readers_to_upstream(
    tmp_path: Path,
) -> None:
    claim, clock, remote = watched(tmp_path)
    claim.announce(len(DATA))
    clock.advance(1)
    assert remote.ready.called  # readers send their headers
    for n in range(1, 10):  # news within every 5 s: still waited for
        with open(claim.path, "ab") as f:
            f.write(DATA[n * 10 : n * 10 + 10])
        clock.pump([1] * 4)
    assert remote.state is FillState.FILLING and not remote.finished.called
    clock.pump([1] * 6)  # then none
    assert (remote.state, remote.resume_upstream) == (FillState.FAILED, True)
    assert remote.written == 90  # what its readers had, they keep
    claim.release()


def test_a_dead_fill_is_no_reason_to_resume_from_upstream(tmp_path: Path) -> None:
    claim, clock, remote = watched(tmp_path)
    claim.release()  # the holder gave up (its upstream failed it)
    clock.advance(1)
    assert remote.state is FillState.FAILED and not remote.resume_upstream


def test_clean_temp_leaves_a_live_fill_and_a_live_manifest_get_alone(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path, 10_000)
    live = FillClaim.take(store.temp_path(DIGEST))
    assert isinstance(live, FillClaim)
    live.announce(None)
    getting = FillClaim.take(ManifestClaims(store.tmp, None).path(DIGEST))
    assert isinstance(getting, FillClaim)
    dead = store.tmp / "sha256-dead.fill"
    dead.write_bytes(b"half")
    (store.tmp / "sha256-dead.manifest").touch()
    (store.tmp / "sha256-old.1234.5678").write_bytes(b"an older version's")
    clean_temp(store.tmp)
    names = sorted(p.name for p in store.tmp.iterdir())
    assert names == sorted(
        [live.path.name, live.path.name + ".length", getting.path.name]
    )
    live.release()
    getting.release()


@pytest.mark.parametrize(
    ("ports", "given", "expected"),
    [
        (["tcp:5000", "tcp6:5001"], "3", 3),
        (["acme:/var/lib/docxy:tcp:443:domains=example.com"], "2", 2),
        (["unix:/run/docxy.sock"], None, 1),
        (["acme:/var/lib/docxy:unix:/run/docxy.sock:domains=example.com"], None, 1),
        (["tcp:5000"], "1", 1),
    ],
)
def test_workers_setting(ports: list[str], given: str | None, expected: int) -> None:
    settings = {"port": ports, "public-url": "https://mirror.example"}
    settings.update({"workers": given} if given else {})
    assert build_config(settings).workers == expected


def test_workers_auto_is_one_per_core() -> None:
    from docxy.shared_ports import available_cores

    assert build_config({}).workers == available_cores()


def test_workers_with_a_unix_port_stop_docxy_with_one_line() -> None:
    """A stopping worker would unlink the socket path of the others; an
    acme: port on one is not shareable either."""
    for port in ("unix:/run/d.sock", "acme:/s:unix:/run/d.sock:domains=a.example"):
        with pytest.raises(ConfigError, match=r"workers: '.*cannot be shared"):
            build_config(
                {"port": [port], "workers": "2", "public-url": "https://m.example"}
            )


def test_workers_auto_with_an_acme_port_is_one_per_core() -> None:
    from docxy.shared_ports import available_cores

    config = build_config({"port": ["acme:/s:tcp:443:domains=a.example"]})
    assert config.workers == available_cores()


def test_metrics_of_workers_are_one_text_each_family_once() -> None:
    from docxy.worker_probes import merge

    one = (
        "# HELP docxy_requests_total Requests.\n# TYPE docxy_requests_total counter\n"
        'docxy_requests_total{route="blob",status="200"} 3.0\n'
        "# HELP docxy_in_flight In flight.\n# TYPE docxy_in_flight gauge\n"
        "docxy_in_flight 1.0\n"
    )
    two = one.replace("3.0", "5.0").replace("1.0", "0.0")
    assert merge([(0, one), (1, two)]).splitlines() == [
        "# HELP docxy_requests_total Requests.",
        "# TYPE docxy_requests_total counter",
        'docxy_requests_total{worker="0",route="blob",status="200"} 3.0',
        'docxy_requests_total{worker="1",route="blob",status="200"} 5.0',
        "# HELP docxy_in_flight In flight.",
        "# TYPE docxy_in_flight gauge",
        'docxy_in_flight{worker="0"} 1.0',
        'docxy_in_flight{worker="1"} 0.0',
    ]


def test_auto_workers_stay_within_a_containers_cpu_limit(tmp_path: Path) -> None:
    from docxy.shared_ports import available_cores

    cores = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == cores  # no cgroup files: affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # limits.cpu: 500m
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{150000 * cores} 100000\n")
    assert available_cores(tmp_path) == cores  # never above the affinity
