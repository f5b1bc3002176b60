"""Digest-affine Docxy replicas behind nginx and HAProxy consistent hashing.

Why: replicas behind round-robin each fetch and store every blob again.
With the shipped balancer configurations (deploy/balancer/), every request
for one blob lands on one replica, so the upstream registry's own log
shows one GET per blob however many clients pull at once; token requests
may go to any replica, and a replica removed from the set moves only its
own blobs, which the others fetch once more.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from docxy.own_tokens import ANONYMOUS_TOKEN
from tests.support.balancer import BALANCERS, BINARIES, Balancer
from tests.support.blob_counts import blob_gets
from tests.support.clients import CONTAINERD, CTR, Containerd
from tests.support.daemons import need, running
from tests.support.docxy import AccessLog, Docxy, DocxyFactory
from tests.support.processes import LOOPBACK, free_port
from tests.support.registry import Registry, Upstream, fetch, get_token
from tests.support.skopeo import assert_pulled, skopeo_pull

REPLICAS = 3


@dataclass
class ReplicaSet:
    balancer: Balancer
    replicas: list[Docxy]
    logs: list[AccessLog]


def start_replica_set(
    kind: str, factory: DocxyFactory, upstream: Upstream, base: Path, *extra: str
) -> ReplicaSet:
    """3 replicas (a cache each, the balancer's public-url) behind ``kind``."""
    need(BINARIES[kind])
    port = free_port()
    public = f"http://{LOOPBACK}:{port}"
    replicas = [
        factory(
            upstream.url,
            "--cache-dir",
            str(base / f"cache-{i}"),
            "--public-url",
            public,
            *extra,
        )
        for i in range(REPLICAS)
    ]
    logs = [AccessLog(r) for r in replicas]
    balancer = BALANCERS[kind](base / kind, [r.hostport for r in replicas], port=port)
    return ReplicaSet(balancer, replicas, logs)


@pytest.fixture(params=sorted(BALANCERS))
def replica_set(
    request: pytest.FixtureRequest,
    docxy_factory: DocxyFactory,
    upstream: Upstream,
    tmp_path: Path,
) -> Iterator[ReplicaSet]:
    rs = start_replica_set(request.param, docxy_factory, upstream, tmp_path)
    try:
        yield rs
    finally:
        rs.balancer.stop()


def served_by(rs: ReplicaSet, blob: str) -> set[int]:
    """The replicas that answered a GET of ``blob``."""
    return {
        i
        for i, log in enumerate(rs.logs)
        for e in log.entries()
        if e.method == "GET" and e.bare_path.endswith(f"/blobs/{blob}")
    }


def test_concurrent_pulls_through_the_balancer_make_one_upstream_get_per_blob(
    replica_set: ReplicaSet, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:1.0"]
    since = len(upstream.requests())

    def pull(n: int) -> Path:
        out = tmp_path / f"pull-{n}"
        skopeo_pull(replica_set.balancer.hostport, "multi:1.0", out, "--all")
        return out

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(pull, range(4)))

    for out in outs:
        assert_pulled(out, image.blobs, image.digest)
    gets = blob_gets(upstream.requests()[since:], image.blobs)
    assert set(gets.values()) == {1}, gets
    # Affinity: each blob's every request went to one replica.
    for blob in image.blobs:
        assert len(served_by(replica_set, blob)) == 1, blob
    # The realm clients were sent to is the balancer's, never a replica's.
    assert any(
        e.bare_path == "/auth/token" and e.status == 200
        for log in replica_set.logs
        for e in log.entries()
    )


def test_a_token_from_one_replica_works_on_every_replica(
    replica_set: ReplicaSet, upstream: Upstream
) -> None:
    """Tokens are the upstream's (or Docxy's own, the same everywhere): no
    replica keeps state a token depends on, and each answers for content it
    does not have by fetching it."""
    image = upstream.images["library/alpine:3.20"]
    first, *others = replica_set.replicas
    ping = fetch(f"{first.url}/v2/")
    assert replica_set.balancer.url in (ping.header("www-authenticate") or "")
    token = get_token(
        f"{first.url}/auth/token",
        upstream.service,
        ["repository:library/alpine:pull"],
    )
    for replica in others:
        answer = fetch(
            f"{replica.url}/v2/library/alpine/manifests/{image.digest}",
            headers={"Authorization": f"Bearer {token}", "Accept": image.media_type},
        )
        assert answer.status == 200, answer.body
        layer = image.blobs[-1]
        blob = fetch(
            f"{replica.url}/v2/library/alpine/blobs/{layer}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert blob.body == upstream.blob_bytes("library/alpine", layer)


def test_docxys_own_tokens_are_good_on_every_replica(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """An open upstream: one replica's realm hands out Docxy's anonymous
    token (the client still wants one); another replica takes it. It is the
    same constant everywhere (no per-process key a replica could lack)."""
    image = upstream.images["library/alpine:3.20"]
    plain = Registry(tmp_path / "plain", upstream.registry.storage, None, readonly=True)
    try:
        public = f"http://{LOOPBACK}:{free_port()}"
        first, second = (
            docxy_factory(plain.url, "--public-url", public) for _ in range(2)
        )
        answer = fetch(f"{first.url}/auth/token?scope=repository:library/alpine:pull")
        assert answer.status == 200, answer.body
        token = answer.json()["token"]
        assert token == ANONYMOUS_TOKEN
        manifest = fetch(
            f"{second.url}/v2/library/alpine/manifests/{image.digest}",
            headers={"Authorization": f"Bearer {token}", "Accept": image.media_type},
        )
        assert manifest.status == 200, manifest.body
        assert manifest.header("docker-content-digest") == image.digest
    finally:
        plain.stop()


def test_a_removed_replica_moves_only_its_own_blobs(
    replica_set: ReplicaSet, upstream: Upstream, tmp_path: Path
) -> None:
    """Pulls go on through the others; only the dead replica's blobs are
    fetched again, once each, on the replica the ring gives them to."""
    image = upstream.images["library/multi:1.0"]
    skopeo_pull(replica_set.balancer.hostport, "multi:1.0", tmp_path / "a", "--all")
    owners = {blob: served_by(replica_set, blob) for blob in image.blobs}
    assert all(len(o) == 1 for o in owners.values()), owners
    by_replica = [[b for b, o in owners.items() if o == {i}] for i in range(REPLICAS)]
    victim = max(range(REPLICAS), key=lambda i: len(by_replica[i]))
    replica_set.replicas[victim].stop()
    if replica_set.balancer.kind == "haproxy":
        # Its health check takes the replica out of the ring.
        replica_set.balancer.wait_for_log(f"docxy-replica-{victim} is DOWN")
    since = len(upstream.requests())

    skopeo_pull(replica_set.balancer.hostport, "multi:1.0", tmp_path / "b", "--all")

    assert_pulled(tmp_path / "b", image.blobs, image.digest)
    gets = blob_gets(upstream.requests()[since:], image.blobs)
    moved = {b for b, n in gets.items() if n}
    assert moved == set(by_replica[victim]), (gets, by_replica, victim)
    assert set(gets[b] for b in moved) <= {1}, gets


def test_one_blob_under_several_names_lands_on_one_replica(
    replica_set: ReplicaSet, upstream: Upstream
) -> None:
    """The hash key of a blob is its digest alone: the repository, a path
    alias and containerd's ``?ns=`` do not send it to another replica."""
    image = upstream.images["library/alpine:3.20"]
    token = get_token(
        f"{replica_set.balancer.url}/auth/token",
        upstream.service,
        ["repository:library/alpine:pull"],
    )
    auth = {"Authorization": f"Bearer {token}"}
    for layer in image.blobs:
        for path in (
            f"/v2/library/alpine/blobs/{layer}",
            f"/v2/docker.io/library/alpine/blobs/{layer}",
            f"/v2/library/alpine/blobs/{layer}?ns=docker.io",
            f"/docker.io/v2/library/alpine/blobs/{layer}",
        ):
            answer = fetch(f"{replica_set.balancer.url}{path}", headers=auth)
            assert answer.status == 200, (path, answer.body)
        assert len(served_by(replica_set, layer)) == 1, layer


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    yield from running(tmp_path_factory, "containerd", (CONTAINERD, CTR), Containerd)


@pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root")
def test_containerd_pulls_through_the_balancer(
    replica_set: ReplicaSet, containerd: Containerd, upstream: Upstream
) -> None:
    """containerd never pings, sends ``?ns=docker.io`` and gets tokens from
    the realm a replica named: the balancer's."""
    image = upstream.images["library/multi:1.0"]
    ref = "docker.io/library/multi:1.0"
    containerd.set_mirror(replica_set.balancer.url)
    since = len(upstream.requests())
    containerd.pull("multi", ref)
    assert containerd.image_digest("multi", ref) == image.digest
    wanted = [image.configs["linux/amd64"], *image.layers["linux/amd64"]]
    gets = blob_gets(upstream.requests()[since:], wanted)
    assert set(gets.values()) == {1}, gets
    for blob in wanted:
        assert len(served_by(replica_set, blob)) == 1, blob


def status_from(source: str, url: str) -> int:
    """A GET from the loopback address ``source`` (127.0.0.0/8 is all ours)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("kind", sorted(BALANCERS))
def test_the_balancer_passes_the_client_address_to_trusting_replicas(
    kind: str, docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """``allow`` behind the balancer: the shipped configuration sends
    X-Forwarded-For, and replicas that trust the balancer judge the client
    by it, not by the balancer's own address."""
    rs = start_replica_set(
        kind,
        docxy_factory,
        upstream,
        tmp_path,
        "--allow",
        "127.0.0.5/32",
        "--trusted-proxies",
        f"{LOOPBACK}/32",
    )
    try:
        url = f"{rs.balancer.url}/v2/"
        assert status_from("127.0.0.5", url) == 401  # allowed: the challenge
        assert status_from("127.0.0.6", url) == 403
        assert status_from(LOOPBACK, url) == 403  # the balancer's own address
    finally:
        rs.balancer.stop()
