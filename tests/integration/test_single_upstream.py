"""Two ways people run Docxy that must work out of the box (issue 8, 3 and 4).

- A plain internal registry (no token service) behind a path alias, next
  to a token-auth default upstream: podman (registries.conf mirror location
  ``mirror/<alias>``) and skopeo (``docker://mirror/<alias>/...``) take the
  default upstream's challenge from their ``/v2/`` ping, ask its realm for
  a token for ``<alias>/...``, and must pull.
- ``twistd docxy --upstream URL`` with a host that is not Docker Hub's (a
  Hub mirror): the default upstream is still docker.io, so containerd's
  ``?ns=docker.io`` is served.

Real registries, real clients; the clients' proxy leads nowhere, so a pull
that passes came through Docxy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.support.clients import (
    CONTAINERD,
    CTR,
    PODMAN,
    Containerd,
    Podman,
    request_urls,
)
from tests.support.docxy import AccessLog, Docxy, DocxyFactory
from tests.support.images import ImageInfo, ImageSpec, populate
from tests.support.registry import Upstream, start_plain_registry
from tests.support.skopeo import assert_pulled, skopeo_pull

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the container clients need root"
)

ALIAS = "internal"
INTERNAL = "registry.internal.example"  # podman's name for it (never resolved)
SPEC = ImageSpec("team/app", "1", layer_sizes=(64 * 1024,), seed="plain-registry")


@dataclass
class Site:
    plain: Upstream
    image: ImageInfo
    docxy: Docxy


@pytest.fixture(scope="module", params=["no-cache", "cache"])
def site(
    upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Site]:
    """As a pure proxy and as a cache (which checks access upstream too)."""
    workdir = tmp_path_factory.mktemp("plain")
    plain = start_plain_registry(workdir)
    docxy = None
    try:
        image = populate(plain, workdir / "images", [SPEC])[SPEC.ref]
        config = workdir / "docxy.toml"
        config.write_text(
            f'[upstreams.{ALIAS}]\nurl = "{plain.url}"\naliases = ["{ALIAS}"]\n'
        )
        args = ["--config", str(config)]
        if request.param == "cache":
            args += ["--cache-dir", str(workdir / "cache")]
        docxy = Docxy(upstream.url, workdir / "docxy.log", args)
        yield Site(plain, image, docxy)
        assert docxy.alive(), docxy.log_text()[-3000:]
    finally:
        if docxy is not None:
            docxy.stop()
        plain.stop()


def short_base(name: str) -> Path:
    """A private state dir short enough for unix sockets."""
    return Path(tempfile.mkdtemp(prefix=f"docxy-{name}-"))


def assert_token_was_anonymous(log: AccessLog) -> None:
    tokens = [e for e in log.entries() if e.bare_path.startswith("/auth/")]
    assert tokens and all(e.status == 200 for e in tokens), log.dump()
    assert all(e.upstream_status == "-" for e in tokens), log.dump()


def test_podman_pulls_an_open_upstream_behind_an_alias(site: Site) -> None:
    if shutil.which(PODMAN) is None:
        pytest.skip("podman missing")
    base = short_base("podman")
    podman = Podman(base, site.docxy.hostport)
    try:
        podman.set_mirrors({INTERNAL: [f"{site.docxy.hostport}/{ALIAS}"]})
        log = AccessLog(site.docxy)
        ref = f"{INTERNAL}/{SPEC.ref}"

        podman.pull(ref)

        assert podman.inspect(ref)["Digest"] == site.image.digest
        assert_token_was_anonymous(log)
        paths = {e.bare_path for e in log.entries() if e.status == 200}
        assert f"/v2/{ALIAS}/{SPEC.repo}/manifests/{SPEC.tag}" in paths, log.dump()
    finally:
        podman.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_skopeo_pulls_an_open_upstream_behind_an_alias(
    site: Site, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    log = AccessLog(site.docxy)

    skopeo_pull(site.docxy.hostport, f"{ALIAS}/{SPEC.ref}", out, "--quiet")

    assert_pulled(out, site.image.blobs, manifest=site.image.digest)
    assert_token_was_anonymous(log)


def test_upstream_url_keeps_docker_io_for_containerd(
    upstream: Upstream, docxy_factory: DocxyFactory
) -> None:
    """``--upstream <a Hub mirror>`` and nothing else: containerd's requests
    carry ``?ns=docker.io`` and must be served from that URL."""
    if shutil.which(CONTAINERD) is None or shutil.which(CTR) is None:
        pytest.skip("containerd missing")
    docxy: Docxy = docxy_factory(upstream.url, library_prefix=None)
    image = upstream.images["library/alpine:3.20"]
    base = short_base("containerd")
    containerd = Containerd(base)
    try:
        containerd.set_mirror(docxy.url)
        log = AccessLog(docxy)
        ref = "docker.io/library/alpine:3.20"

        result = containerd.pull("hubmirror", ref)

        assert containerd.image_digest("hubmirror", ref) == image.digest
        sent = request_urls(result.stdout + result.stderr)
        assert sent, result.stderr
        for _method, url in sent:
            parts = urlsplit(url)
            assert parts.netloc == docxy.hostport, url
            assert ("ns", "docker.io") in parse_qsl(parts.query), url
        served = [e for e in log.entries() if e.bare_path.startswith("/v2/library/")]
        assert served and all(e.status in (200, 401) for e in served), log.dump()
    finally:
        containerd.stop()
        shutil.rmtree(base, ignore_errors=True)
