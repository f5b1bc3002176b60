"""``docxy-prefetch`` against a real Docxy and registry: afterwards pulls are warm.

The command runs as users run it (``python -m docxy.prefetch``, a separate
process speaking HTTP to Docxy). A warm cache is proven the way the cache
tests prove it: a skopeo pull afterwards makes no upstream blob GET
(counted in the registry's own log), and skopeo verifies every digest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.blob_counts import blob_get_count
from tests.support.docxy import AccessLog, Docxy, DocxyFactory, prefetch
from tests.support.images import ImageInfo, ImageSpec, populate
from tests.support.registry import Upstream, start_upstream
from tests.support.skopeo import assert_pulled, skopeo_pull

AMD64 = ("--override-arch", "amd64")
ARM64 = ("--override-arch", "arm64")


def cached(docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path) -> Docxy:
    return docxy_factory(upstream.url, "--cache-dir", str(tmp_path / "cache"))


def test_one_platform_of_an_index_then_a_pull_makes_no_upstream_blob_gets(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:1.0"]
    arm64 = [image.configs["linux/arm64"], *image.layers["linux/arm64"]]
    amd64 = [image.configs["linux/amd64"], *image.layers["linux/amd64"]]
    docxy = cached(docxy_factory, upstream, tmp_path)
    before = len(upstream.requests())

    result = prefetch(docxy, "--platform", "linux/arm64", "multi:1.0")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"multi:1.0: {image.digest} linux/arm64 "), lines
    assert f" blobs={len(arm64)} " in lines[0], lines
    assert blob_get_count(upstream.requests()[before:], arm64) == len(arm64)
    # only the chosen platform
    assert blob_get_count(upstream.requests()[before:], amd64) == 0

    warm = len(upstream.requests())
    skopeo_pull(
        docxy.hostport, "multi:1.0", tmp_path / "pull" / "out", global_flags=ARM64
    )
    assert blob_get_count(upstream.requests()[warm:]) == 0


def test_all_platforms_then_a_pull_of_all_makes_no_upstream_blob_gets(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:list"]  # a Docker manifest list
    docxy = cached(docxy_factory, upstream, tmp_path)
    before = len(upstream.requests())

    result = prefetch(docxy, "--all-platforms", "library/multi:list")

    assert result.returncode == 0, result.stderr
    assert "linux/amd64,linux/arm64" in result.stdout, result.stdout
    assert f" blobs={len(image.blobs)} " in result.stdout, result.stdout
    assert blob_get_count(upstream.requests()[before:], image.blobs) == len(image.blobs)

    warm = len(upstream.requests())
    skopeo_pull(docxy.hostport, "multi:list", tmp_path / "pull" / "out", "--all")
    assert blob_get_count(upstream.requests()[warm:]) == 0


def test_registry_host_and_digest_go_through_the_path_alias(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    docxy = cached(docxy_factory, upstream, tmp_path)
    log = AccessLog(docxy)

    result = prefetch(docxy, f"docker.io/library/alpine@{image.digest}")

    assert result.returncode == 0, result.stderr
    assert "single-platform" in result.stdout, result.stdout
    registry_paths = [
        e.bare_path
        for e in log.entries()
        if e.bare_path.startswith("/v2/") and e.bare_path != "/v2/"
    ]
    assert registry_paths, log.dump()
    assert all(p.startswith("/v2/docker.io/library/alpine/") for p in registry_paths), (
        registry_paths
    )
    warm = len(upstream.requests())
    skopeo_pull(
        docxy.hostport, "alpine:3.20", tmp_path / "pull" / "out", global_flags=AMD64
    )
    assert blob_get_count(upstream.requests()[warm:]) == 0


def test_unknown_images_fail_with_one_line_each(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    docxy = cached(docxy_factory, upstream, tmp_path)

    result = prefetch(docxy, "alpine:9.9", "someuser/tool:latest", "nosuch/image:1")

    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith("docxy-prefetch: alpine:9.9: manifest 9.9: 404 "), (
        errors
    )
    assert "MANIFEST_UNKNOWN" in errors[0], errors
    assert errors[1].startswith("docxy-prefetch: nosuch/image:1: "), errors
    # The good one in between was still prefetched.
    assert result.stdout.startswith("someuser/tool:latest: sha256:"), result.stdout


def test_private_image_needs_and_works_with_user(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["private/secret:1"]
    docxy = cached(docxy_factory, upstream, tmp_path)

    anonymous = prefetch(docxy, "private/secret:1")
    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("docxy-prefetch: private/secret:1: "), (
        anonymous.stderr
    )
    assert "401" in anonymous.stderr or "unauthorized" in anonymous.stderr.lower()

    before = len(upstream.requests())
    alice = prefetch(docxy, "--user", "alice:secret", "private/secret:1")
    assert alice.returncode == 0, alice.stderr
    assert blob_get_count(upstream.requests()[before:], image.blobs) == len(image.blobs)
    from_env = prefetch(docxy, "private/secret:1", DOCXY_PREFETCH_USER="alice:secret")
    assert from_env.returncode == 0, from_env.stderr

    warm = len(upstream.requests())
    skopeo_pull(
        docxy.hostport,
        "private/secret:1",
        tmp_path / "pull" / "out",
        "--src-creds",
        "alice:secret",
        global_flags=AMD64,
    )
    assert blob_get_count(upstream.requests()[warm:]) == 0


def test_mirror_url_with_an_alias_path(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """``--mirror http://docxy/<alias>``: requests go to ``/<alias>/v2/...``."""
    docxy = cached(docxy_factory, upstream, tmp_path)
    log = AccessLog(docxy)

    result = prefetch(docxy, "alpine:3.20", mirror=f"{docxy.url}/docker.io")

    assert result.returncode == 0, result.stderr
    paths = [e.bare_path for e in log.entries() if "/blobs/" in e.bare_path]
    assert paths, log.dump()
    assert all(p.startswith("/docker.io/v2/alpine/blobs/") for p in paths)
    warm = len(upstream.requests())
    skopeo_pull(
        docxy.hostport, "alpine:3.20", tmp_path / "pull" / "out", global_flags=AMD64
    )
    assert blob_get_count(upstream.requests()[warm:]) == 0


# --- the point of it: pulls while the upstream is down ------------------------

OUTAGE = ImageSpec(
    "library/outage", "1", platforms=("linux/amd64", "linux/arm64"), seed="outage"
)


@pytest.fixture(scope="module")
def prefetched_then_down(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Docxy, ImageInfo]]:
    """A Docxy that prefetched ``outage:1``, then lost its whole upstream."""
    workdir = tmp_path_factory.mktemp("outage")
    up = start_upstream(workdir, [OUTAGE.repo])
    docxy = None
    try:
        image = populate(up, workdir / "images", [OUTAGE])[OUTAGE.ref]
        docxy = Docxy(
            up.url, workdir / "docxy.log", ["--cache-dir", str(workdir / "cache")]
        )
        result = prefetch(docxy, "outage:1")
        assert result.returncode == 0, result.stderr
        up.stop()  # registry and token service
        yield docxy, image
        assert docxy.alive(), docxy.log_text()[-3000:]
    finally:
        if docxy is not None:
            docxy.stop()
        up.stop()


def test_prefetched_image_pulls_by_digest_with_the_upstream_down(
    prefetched_then_down: tuple[Docxy, ImageInfo], tmp_path: Path
) -> None:
    docxy, image = prefetched_then_down
    out = tmp_path / "pull" / "out"
    skopeo_pull(docxy.hostport, f"outage@{image.digest}", out, global_flags=AMD64)
    assert_pulled(out, [image.configs["linux/amd64"], *image.layers["linux/amd64"]])


def test_prefetched_image_pulls_by_tag_with_the_upstream_down(
    prefetched_then_down: tuple[Docxy, ImageInfo], tmp_path: Path
) -> None:
    docxy, image = prefetched_then_down
    out = tmp_path / "pull" / "out"
    skopeo_pull(docxy.hostport, "outage:1", out, global_flags=AMD64)
    assert_pulled(out, [image.configs["linux/amd64"], *image.layers["linux/amd64"]])
