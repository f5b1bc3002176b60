"""Manifest caching with the real registry and skopeo: fresh tags, outages,
concurrent misses (one upstream GET, each client still checked)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import upstream_of, upstream_over
from tests.support.blob_counts import manifest_get, manifest_gets
from tests.support.blob_pull import pull_token
from tests.support.docxy import AccessLog, DocxyFactory, with_metrics
from tests.support.images import ImageSpec
from tests.support.metrics import scrape
from tests.support.processes import wait_until
from tests.support.registry import (
    MANIFEST_ACCEPT,
    Upstream,
    fetch,
)
from tests.support.relay import GatedRelay
from tests.support.skopeo import assert_pulled, skopeo_pull

SPECS = (
    ImageSpec("library/web", "1", layer_sizes=(120 * 1024,), seed="web"),
    ImageSpec(
        "library/arch",
        "2",
        platforms=("linux/amd64", "linux/arm64"),
        layer_sizes=(90 * 1024,),
        seed="arch",
    ),
    ImageSpec("private/vault", "1", layer_sizes=(80 * 1024,), seed="vault"),
)


REPOSITORIES = sorted({s.repo for s in SPECS})


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The images, pushed once for the module."""
    yield from upstream_of(tmp_path_factory, "manifest-cache-seed", SPECS)


@pytest.fixture
def own_upstream(seeded: Upstream, tmp_path: Path) -> Iterator[Upstream]:
    """An upstream this test may stop: a registry of its own over the seeded
    storage (read-only), so no test pushes the images again."""
    yield from upstream_over(seeded, tmp_path / "up", REPOSITORIES)


def test_second_pull_asks_upstream_for_no_manifest(
    docxy_factory: DocxyFactory, own_upstream: Upstream, tmp_path: Path
) -> None:
    docxy = docxy_factory(own_upstream.url, "--cache-dir", str(tmp_path / "c"))
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "one")
    skopeo_pull(docxy.hostport, "arch:2", tmp_path / "all", "--all")
    since = len(own_upstream.requests())
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "two")
    skopeo_pull(docxy.hostport, "arch:2", tmp_path / "all-again", "--all")
    assert manifest_gets(own_upstream.requests()[since:]) == []
    blob_gets = [
        p for m, p in own_upstream.requests()[since:] if m == "GET" and "/blobs/" in p
    ]
    assert blob_gets == []
    assert "cache=hit" in docxy.log_text()


def test_expired_tag_is_revalidated_with_head_only(
    docxy_factory: DocxyFactory, own_upstream: Upstream, tmp_path: Path
) -> None:
    docxy = docxy_factory(
        own_upstream.url,
        "--cache-dir",
        str(tmp_path / "c"),
        "--cache-freshness",
        "0.001",
    )
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "one")
    since = len(own_upstream.requests())
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "two")
    new = own_upstream.requests()[since:]
    assert manifest_gets(own_upstream.requests()[since:]) == []
    assert any(m == "HEAD" and p.endswith("/manifests/1") for m, p in new), new


def test_images_pulled_before_still_pull_when_upstream_is_down(
    docxy_factory: DocxyFactory, own_upstream: Upstream, tmp_path: Path
) -> None:
    docxy = docxy_factory(own_upstream.url, "--cache-dir", str(tmp_path / "c"))
    image = own_upstream.images["library/web:1"]
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "before")
    skopeo_pull(
        docxy.hostport,
        "private/vault:1",
        tmp_path / "alice",
        "--src-creds",
        "alice:secret",
    )
    docxy.wait_for_log("library/web is public")
    own_upstream.stop()  # registry and token service both gone

    skopeo_pull(docxy.hostport, "web:1", tmp_path / "by-tag")
    skopeo_pull(docxy.hostport, f"web@{image.digest}", tmp_path / "by-digest")
    # The ping and the token were answered without the upstream.
    assert "cache=offline" in docxy.log_text()
    # Private content: no evidence this client may have it, so no.
    assert (
        skopeo_pull(
            docxy.hostport, "private/vault:1", tmp_path / "anon", check=False
        ).returncode
        != 0
    )
    assert not (tmp_path / "anon" / "manifest.json").exists()


def test_expired_tag_is_served_stale_when_upstream_is_down(
    docxy_factory: DocxyFactory, own_upstream: Upstream, tmp_path: Path
) -> None:
    docxy = docxy_factory(
        own_upstream.url,
        "--cache-dir",
        str(tmp_path / "c"),
        "--cache-freshness",
        "0.001",
    )
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "before")
    # Docxy learns in the background that the repository is public.
    docxy.wait_for_log("library/web is public")
    own_upstream.stop()
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "after")
    assert "serving last known library/web:1" in docxy.log_text()


# --- concurrent misses: one upstream GET per manifest ----------------------------

CLIENTS = 4


def joins(metrics_port: int) -> float:
    return scrape(metrics_port)[("docxy_cache_joins_total", ())]


def everyone_asked(
    relay: GatedRelay, metrics_port: int, joined: float, manifest: str
) -> float:
    """Wait until each client asked for ``manifest``: its own GET held at
    ``relay``, or joined another at Docxy (``joined`` before); the joins now."""
    seen = [joined]

    def everyone() -> bool:
        seen[0] = joins(metrics_port)
        return relay.held() + seen[0] - joined == CLIENTS

    wait_until(everyone, 60, f"{CLIENTS} clients asking for {manifest}")
    return seen[0]


def test_concurrent_cold_pulls_make_one_get_per_manifest(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """N skopeo pulls of an OCI index at the same moment: one upstream GET of
    the index and one of the platform's manifest, not N of each."""
    image = upstream.images["library/multi:1.0"]
    platform = image.platform_digests["linux/amd64"]
    relay = GatedRelay(upstream.registry.port)
    try:
        docxy, metrics_port = with_metrics(
            docxy_factory, relay.url, "--cache-dir", str(tmp_path / "cache")
        )
        log = AccessLog(docxy)
        since = len(upstream.requests())
        # Each manifest GET waits upstream until every client asked for that
        # manifest: its own GET (held here) or joined at Docxy (counted).
        relay.hold_answers(manifest_get)
        with ThreadPoolExecutor(CLIENTS) as pool:
            outs = [tmp_path / f"pull-{n}" / "out" for n in range(CLIENTS)]
            pulls = [
                pool.submit(skopeo_pull, docxy.hostport, "multi:1.0", out)
                for out in outs
            ]
            joined = 0.0  # joins of the manifests before this one
            for manifest in (image.digest, platform):  # the index, then amd64's
                joined = everyone_asked(relay, metrics_port, joined, manifest)
                relay.release_answers()
            relay.hold_answers(None)
            relay.release_answers()
            for pull in pulls:
                pull.result()
    finally:
        relay.close()
    amd64 = [image.configs["linux/amd64"], *image.layers["linux/amd64"]]
    for out in outs:
        assert_pulled(out, amd64, platform)
    gets = Counter(
        path.rsplit("/", 1)[1] for path in manifest_gets(upstream.requests()[since:])
    )
    assert gets == {image.digest: 1, platform: 1}, gets
    for reference in ("1.0", platform):
        outcomes = sorted(
            word
            for entry in log.entries()
            if entry.bare_path == f"/v2/multi/manifests/{reference}"
            for word in entry.line.split()
            if word.startswith("cache=")
        )
        assert outcomes == ["cache=joined"] * (CLIENTS - 1) + ["cache=miss"], outcomes


def test_a_client_without_rights_that_joins_an_entitled_get_gets_no_content(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """alice's GET of a private manifest is in flight; bob (a user without
    rights there), an anonymous token and no credentials at all ask for the
    same digest and wait on it, as does admin (who may read it). When it lands, each is
    answered as a hit would be: admin gets the bytes, the others the
    upstream's refusal, never alice's manifest."""
    image = upstream.images["private/secret:1"]
    path = f"/v2/private/secret/manifests/{image.digest}"
    manifest = image.manifests[image.digest]
    relay = GatedRelay(upstream.registry.port)
    try:
        docxy, metrics_port = with_metrics(
            docxy_factory, relay.url, "--cache-dir", str(tmp_path / "cache")
        )

        def headers(creds: tuple[str, str] | None) -> dict[str, str]:
            token = pull_token(docxy, "private/secret", creds)
            return {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}

        alice = headers(("alice", "secret"))
        admin = headers(("admin", "adminpass"))
        others = [headers(("bob", "builder")), headers(None), {}]
        since = len(upstream.registry_entries())
        relay.hold_answers(manifest_get)
        with ThreadPoolExecutor(1 + 1 + len(others)) as pool:
            first = pool.submit(fetch, docxy.url + path, headers=alice)
            wait_until(lambda: relay.held() == 1, 30, "alice's GET upstream")
            joiners = [
                pool.submit(fetch, docxy.url + path, headers=h)
                for h in (admin, *others)
            ]
            wait_until(
                lambda: joins(metrics_port) == len(joiners), 30, "the others to join"
            )
            relay.hold_answers(None)
            relay.release_answers()
            entitled = [first.result(), joiners[0].result()]
            refused = [j.result() for j in joiners[1:]]
    finally:
        relay.close()
    for reply in entitled:
        assert (reply.status, reply.body) == (200, manifest)
        assert reply.header("Docker-Content-Digest") == image.digest
    for reply in refused:
        assert reply.status in (401, 403, 404), (reply.status, reply.body)
        assert manifest not in reply.body
        assert reply.header("Docker-Content-Digest") is None
        assert [e["code"] for e in reply.json()["errors"]], reply.body  # envelope
    samples = scrape(metrics_port)
    assert samples[("docxy_cache_denied_total", ())] == len(refused)
    # One pull of it upstream: alice's (the refusals' own GETs got 401).
    pulled = [
        e
        for e in upstream.registry_entries()[since:]
        if e.method == "GET" and e.path.split("?")[0].endswith(path) and e.status == 200
    ]
    assert len(pulled) == 1, pulled
