"""Manifest caching with the real registry and skopeo: fresh tags, outages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.docxy import Docxy
from tests.support.images import ImageSpec, populate
from tests.support.registry import Upstream, start_upstream
from tests.support.skopeo import skopeo_pull

Factory = Callable[..., Docxy]

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
    workdir = tmp_path_factory.mktemp("manifest-cache-seed")
    up = start_upstream(workdir, REPOSITORIES)
    try:
        up.images = populate(up, workdir / "images", SPECS)
        yield up
    finally:
        up.stop()


@pytest.fixture
def own_upstream(seeded: Upstream, tmp_path: Path) -> Iterator[Upstream]:
    """An upstream this test may stop: a registry of its own over the seeded
    storage (read-only), so no test pushes the images again."""
    up = start_upstream(
        tmp_path / "up", REPOSITORIES, storage=seeded.registry.storage, readonly=True
    )
    up.images = seeded.images
    try:
        yield up
    finally:
        up.stop()


def manifest_gets(upstream: Upstream, since: int) -> list[str]:
    return [
        path
        for method, path in upstream.requests()[since:]
        if method == "GET" and "/manifests/" in path
    ]


def test_second_pull_asks_upstream_for_no_manifest(
    docxy_factory: Factory, own_upstream: Upstream, tmp_path: Path
) -> None:
    docxy = docxy_factory(own_upstream.url, "--cache-dir", str(tmp_path / "c"))
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "one")
    skopeo_pull(docxy.hostport, "arch:2", tmp_path / "all", "--all")
    since = len(own_upstream.requests())
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "two")
    skopeo_pull(docxy.hostport, "arch:2", tmp_path / "all-again", "--all")
    assert manifest_gets(own_upstream, since) == []
    blob_gets = [
        p for m, p in own_upstream.requests()[since:] if m == "GET" and "/blobs/" in p
    ]
    assert blob_gets == []
    assert "cache=hit" in docxy.log_text()


def test_expired_tag_is_revalidated_with_head_only(
    docxy_factory: Factory, own_upstream: Upstream, tmp_path: Path
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
    assert manifest_gets(own_upstream, since) == []
    assert any(m == "HEAD" and p.endswith("/manifests/1") for m, p in new), new


def test_images_pulled_before_still_pull_when_upstream_is_down(
    docxy_factory: Factory, own_upstream: Upstream, tmp_path: Path
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
    docxy_factory: Factory, own_upstream: Upstream, tmp_path: Path
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
