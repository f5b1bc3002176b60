"""Mirrors of mirrors: a node-local Docxy whose upstream is a regional Docxy.

Why: a fleet puts one Docxy on every node and one per region in front of
Docker Hub. Every client must pull through both tiers as through one
(tokens, ``ns``, aliases, ranges, 401s, errors), each tier must cache, a
blob must cross the regional link once per node at most and the upstream
link once in all, and a node must keep serving what it cached when the
regional tier goes away. The upstream registry's own log and the regional
Docxy's access log count the transfers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import upstream_over
from tests.support.blob_counts import blob_gets
from tests.support.daemons import every_client
from tests.support.docxy import AccessLog, Docxy, DocxyFactory
from tests.support.registry import (
    Upstream,
    fetch,
    get_token,
    parse_challenge,
)
from tests.support.skopeo import assert_pulled, skopeo_pull


@dataclass
class Chain:
    """Upstream registry <- regional Docxy <- node Docxy, each with a cache."""

    regional: Docxy
    node: Docxy


def start_chain(factory: DocxyFactory, upstream: Upstream, base: Path) -> Chain:
    regional = factory(upstream.url, "--cache-dir", str(base / "regional"))
    node = factory(regional.url, "--cache-dir", str(base / "node"))
    return Chain(regional, node)


def add_node(factory: DocxyFactory, chain: Chain, base: Path) -> Docxy:
    return factory(chain.regional.url, "--cache-dir", str(base))


def regional_gets(log: AccessLog, blobs: list[str]) -> dict[str, int]:
    """Blob GETs the regional tier answered 200 (node-to-regional transfers)."""
    return blob_gets(
        [(e.method, e.path) for e in log.entries() if e.status == 200], blobs
    )


# --- the chain, with skopeo -------------------------------------------------


def test_a_blob_crosses_each_link_once(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """Two nodes pull one image: upstream once in all, regional once per node."""
    image = upstream.images["library/multi:1.0"]
    chain = start_chain(docxy_factory, upstream, tmp_path)
    second = add_node(docxy_factory, chain, tmp_path / "node2")
    regional_log = AccessLog(chain.regional)
    since = len(upstream.requests())

    for node, out in ((chain.node, "a"), (chain.node, "b"), (second, "c")):
        skopeo_pull(node.hostport, "multi:1.0", tmp_path / out, "--all")
        assert_pulled(tmp_path / out, image.blobs, image.digest)

    assert set(blob_gets(upstream.requests()[since:], image.blobs).values()) == {1}
    # Two nodes, each fetched every blob from the regional tier once.
    assert set(regional_gets(regional_log, image.blobs).values()) == {2}, (
        regional_log.dump()
    )


def test_private_image_with_credentials_through_both_tiers(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """The token request crosses both tiers to the upstream's token service."""
    image = upstream.images["private/secret:1"]
    chain = start_chain(docxy_factory, upstream, tmp_path)
    tokens_before = len(upstream.token_requests())

    denied = skopeo_pull(
        chain.node.hostport, "private/secret:1", tmp_path / "anon", check=False
    )
    assert denied.returncode != 0
    skopeo_pull(
        chain.node.hostport,
        "private/secret:1",
        tmp_path / "alice",
        "--src-creds",
        "alice:secret",
    )
    assert_pulled(tmp_path / "alice", image.blobs, image.digest)
    alice = [r for r in upstream.token_requests()[tokens_before:] if r["user"]]
    assert alice and all(r["user"] == "alice" for r in alice), alice
    # Cached at the node now, yet still not for anonymous clients.
    again = skopeo_pull(
        chain.node.hostport, "private/secret:1", tmp_path / "anon2", check=False
    )
    assert again.returncode != 0


def test_challenges_name_the_node_realm_and_the_upstream_service(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """A client of the node is sent to the node's realm, never the regional's."""
    chain = start_chain(docxy_factory, upstream, tmp_path)
    ping = fetch(f"{chain.node.url}/v2/")
    assert ping.status == 401
    scheme, params = parse_challenge(ping.header("www-authenticate") or "")
    assert scheme.lower() == "bearer"
    assert params["realm"] == f"{chain.node.url}/auth/token"
    assert params["service"] == upstream.service

    path = "/v2/library/alpine/manifests/3.20"
    first = fetch(f"{chain.node.url}{path}")
    assert first.status == 401
    _, params = parse_challenge(first.header("www-authenticate") or "")
    assert params["realm"] == f"{chain.node.url}/auth/docker.io/token"
    assert params["scope"] == "repository:library/alpine:pull"
    assert first.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_ranges_and_errors_pass_through_both_tiers(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    chain = start_chain(docxy_factory, upstream, tmp_path)
    token = get_token(
        f"{chain.node.url}/auth/token",
        upstream.service,
        ["repository:library/alpine:pull"],
    )
    auth = {"Authorization": f"Bearer {token}"}
    blob = image.blobs[-1]
    whole = upstream.blob_bytes("library/alpine", blob)
    url = f"{chain.node.url}/v2/library/alpine/blobs/{blob}"

    part = fetch(url, headers={**auth, "Range": "bytes=10-99"})
    assert part.status == 206, part.body[:300]
    assert part.body == whole[10:100]
    assert part.header("content-range") == f"bytes 10-99/{len(whole)}"
    assert fetch(url, headers=auth).body == whole  # a miss that fills the node
    cached = fetch(url, headers={**auth, "Range": "bytes=5-"})
    assert (cached.status, cached.body) == (206, whole[5:])

    missing = fetch(
        f"{chain.node.url}/v2/library/alpine/manifests/nope",
        headers={**auth, "Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert missing.status == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    bad = fetch(
        f"{chain.node.url}/v2/library/alpine/blobs/sha256:{'0' * 64}", headers=auth
    )
    assert bad.status == 404
    assert bad.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_alias_and_ns_reach_the_upstream_through_both_tiers(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """podman-style path aliases and containerd's ``ns`` at the node tier."""
    image = upstream.images["library/alpine:3.20"]
    chain = start_chain(docxy_factory, upstream, tmp_path)
    skopeo_pull(
        chain.node.hostport, "docker.io/library/alpine:3.20", tmp_path / "alias"
    )
    assert_pulled(tmp_path / "alias", image.blobs, image.digest)
    token = get_token(
        f"{chain.node.url}/auth/docker.io/token",
        upstream.service,
        ["repository:library/alpine:pull"],
    )
    answer = fetch(
        f"{chain.node.url}/v2/library/alpine/manifests/{image.digest}?ns=docker.io",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": image.media_type,
        },
    )
    assert answer.status == 200
    assert answer.header("oci-namespace") == "docker.io"
    unknown = fetch(f"{chain.node.url}/v2/library/alpine/manifests/3.20?ns=nope.io")
    assert unknown.status == 404
    assert unknown.json()["errors"][0]["code"] == "NAME_UNKNOWN"


@pytest.fixture
def own_upstream(upstream: Upstream, tmp_path: Path) -> Iterator[Upstream]:
    """An upstream this test may stop: the session's images, read-only."""
    yield from upstream_over(upstream, tmp_path / "up")


def test_a_new_node_pulls_what_an_offline_regional_tier_cached(
    docxy_factory: DocxyFactory, own_upstream: Upstream, tmp_path: Path
) -> None:
    """Upstream gone: the regional tier's offline answers serve a fresh node."""
    image = own_upstream.images["library/multi:1.0"]
    chain = start_chain(docxy_factory, own_upstream, tmp_path)
    skopeo_pull(chain.node.hostport, "multi:1.0", tmp_path / "before", "--all")
    chain.regional.wait_for_log("library/multi is public")
    own_upstream.stop()  # registry and token service both gone

    fresh = add_node(docxy_factory, chain, tmp_path / "fresh")
    regional_log = AccessLog(chain.regional)
    skopeo_pull(fresh.hostport, "multi:1.0", tmp_path / "after", "--all")
    assert_pulled(tmp_path / "after", image.blobs, image.digest)
    assert "cache=offline" in regional_log.dump()
    assert set(regional_gets(regional_log, image.blobs).values()) == {1}
    # Still nothing for content the regional tier never had.
    never = skopeo_pull(fresh.hostport, "multi:list", tmp_path / "never", check=False)
    assert never.returncode != 0


def test_a_second_registry_of_the_regional_tier_by_its_alias_mount(
    docxy_factory: DocxyFactory,
    upstream: Upstream,
    own_upstream: Upstream,
    tmp_path: Path,
) -> None:
    """The node's ghcr.io is the regional tier's ``/ghcr.io`` mount (its URL
    has a path): ``ns=ghcr.io`` and the ``ghcr.io/`` alias at the node reach
    the regional tier's ghcr.io upstream, with that upstream's own realm."""
    image = own_upstream.images["someuser/tool:latest"]
    regional_conf = tmp_path / "regional.toml"
    regional_conf.write_text(f'[upstreams."ghcr.io"]\nurl = "{own_upstream.url}"\n')
    regional = docxy_factory(
        upstream.url,
        "--config",
        str(regional_conf),
        "--cache-dir",
        str(tmp_path / "regional"),
    )
    node_conf = tmp_path / "node.toml"
    node_conf.write_text(f'[upstreams."ghcr.io"]\nurl = "{regional.url}/ghcr.io"\n')
    node = docxy_factory(
        regional.url, "--config", str(node_conf), "--cache-dir", str(tmp_path / "n")
    )
    hub_since, ghcr_since = len(upstream.requests()), len(own_upstream.requests())

    skopeo_pull(node.hostport, "ghcr.io/someuser/tool:latest", tmp_path / "alias")
    assert_pulled(tmp_path / "alias", image.blobs, image.digest)
    first = fetch(f"{node.url}/v2/someuser/tool/manifests/latest?ns=ghcr.io")
    assert first.status == 401
    _, params = parse_challenge(first.header("www-authenticate") or "")
    assert params["realm"] == f"{node.url}/auth/ghcr.io/token"
    token = get_token(
        params["realm"], params["service"], ["repository:someuser/tool:pull"]
    )
    answer = fetch(
        f"{node.url}/v2/someuser/tool/manifests/latest?ns=ghcr.io",
        headers={"Authorization": f"Bearer {token}", "Accept": image.media_type},
    )
    assert answer.status == 200, answer.body
    assert answer.header("docker-content-digest") == image.digest
    ghcr_gets = blob_gets(own_upstream.requests()[ghcr_since:], image.blobs)
    assert set(ghcr_gets.values()) == {1}, ghcr_gets
    assert not any(
        "/someuser/tool/" in path for _, path in upstream.requests()[hub_since:]
    )


# --- real clients, and the regional tier gone ------------------------------


def test_clients_pull_through_both_tiers_and_from_the_node_without_regional(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """skopeo, dockerd (with its Hub login for a private image), containerd
    and podman through both tiers; then the regional tier stops, and what
    each pulled still pulls from the node."""
    alpine = upstream.images["library/alpine:3.20"]
    tool = upstream.images["someuser/tool:latest"]
    multi = upstream.images["library/multi:1.0"]
    chain = start_chain(docxy_factory, upstream, tmp_path)
    node = chain.node
    with every_client(node.url, node.hostport) as clients:
        dockerd, containerd, podman = (
            clients.dockerd,
            clients.containerd,
            clients.podman,
        )

        def docker_pulled(ref: str) -> None:
            dockerd.pull(ref)
            digests = " ".join(dockerd.inspect(ref)["RepoDigests"])
            assert f"@{upstream.images[ref].digest}" in digests, digests

        def containerd_pulled() -> None:
            containerd.pull("tool", "docker.io/someuser/tool:latest")
            pulled = containerd.image_digest("tool", "docker.io/someuser/tool:latest")
            assert pulled == tool.digest

        def podman_pulled() -> None:
            podman.pull("docker.io/library/alpine:3.20")
            digest = podman.inspect("docker.io/library/alpine:3.20")["Digest"]
            assert digest == alpine.digest

        skopeo_pull(node.hostport, "multi:1.0", tmp_path / "skopeo", "--all")
        assert_pulled(tmp_path / "skopeo", multi.blobs, multi.digest)
        tokens_before = len(upstream.token_requests())
        try:
            dockerd.set_hub_credentials("alice", "secret")
            docker_pulled("private/secret:1")
        finally:
            dockerd.set_hub_credentials(None)
        alice = [r for r in upstream.token_requests()[tokens_before:] if r["user"]]
        assert alice, upstream.token_requests()[tokens_before:]
        assert ("account", "alice") in [tuple(p) for p in alice[-1]["params"]]
        docker_pulled("library/alpine:3.20")
        containerd_pulled()
        podman_pulled()
        for repo in ("library/multi", "someuser/tool", "library/alpine"):
            node.wait_for_log(f"{repo} is public")

        chain.regional.stop()
        node_log = AccessLog(node)

        skopeo_pull(node.hostport, "multi:1.0", tmp_path / "offline", "--all")
        assert_pulled(tmp_path / "offline", multi.blobs, multi.digest)
        dockerd.remove("library/alpine:3.20")
        docker_pulled("library/alpine:3.20")
        containerd.ctr("tool", "image", "rm", "docker.io/someuser/tool:latest")
        containerd.ctr("tool", "content", "prune", "references", check=False)
        containerd_pulled()
        podman.remove("docker.io/library/alpine:3.20")
        podman_pulled()

    assert "cache=offline" in node_log.dump()
    served = {(e.method, e.bare_path) for e in node_log.entries() if e.status == 200}
    for layer in multi.blobs + alpine.blobs:
        assert any(p.endswith(f"/blobs/{layer}") for _, p in served), layer
    assert ("HEAD", "/v2/someuser/tool/manifests/latest") in served, node_log.dump()
    # Nothing that was never pulled comes out of a node cut off from its region.
    never = skopeo_pull(node.hostport, "multi:list", tmp_path / "never", check=False)
    assert never.returncode != 0
