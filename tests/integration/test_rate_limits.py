"""429 on every path, ``/v2/`` and the token service included (Docker Hub's
abuse limit): cached images still pull with every client, at once, and
uncached content gets the 429 in the registry envelope with ``Retry-After``.

The upstream is the real registry and token service behind relays that
answer 429 themselves on demand (:mod:`tests.support.faulty`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import EveryClient, at_once, every_client
from tests.support.docxy import Docxy, DocxyFactory
from tests.support.faulty import FaultyUpstream, start_faulty_upstream
from tests.support.images import ImageInfo, ImageSpec
from tests.support.registry import fetch
from tests.support.skopeo import skopeo_pull

WEB = ImageSpec("library/web", "1", layer_sizes=(120 * 1024, 40 * 1024), seed="rl")
VAULT = ImageSpec("private/vault", "1", layer_sizes=(80 * 1024,), seed="rl-vault")
UNKNOWN = "sha256:" + "0" * 64
RETRY_AFTER = 3600


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyUpstream]:
    up = start_faulty_upstream(tmp_path_factory.mktemp("rate-limited"), [WEB, VAULT])
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(autouse=True)
def well_again(faulty: FaultyUpstream) -> Iterator[None]:
    """Each test starts (and leaves) the upstream answering normally."""
    faulty.recover()
    yield
    faulty.recover()


def warm(docxy: Docxy, tmp_path: Path) -> None:
    """Pull web (anonymous) and vault (alice) once, and learn web is public."""
    skopeo_pull(docxy.hostport, "web:1", tmp_path / "warm-web" / "out")
    skopeo_pull(
        docxy.hostport,
        "private/vault:1",
        tmp_path / "warm-vault" / "out",
        "--src-creds",
        "alice:secret",
    )
    docxy.wait_for_log("library/web is public")


def assert_rate_limited(response_status: int, headers: list[tuple[str, str]]) -> None:
    assert response_status == 429
    values = [v for k, v in headers if k.lower() == "retry-after"]
    assert len(values) == 1, headers
    # The upstream's Retry-After, counting down while Docxy holds back
    # (docxy.pull_budget): never its 60 s default, never more than given.
    assert RETRY_AFTER - 600 < int(values[0]) <= RETRY_AFTER, headers


def pull_web_with_every_client(
    clients: EveryClient, docxy: Docxy, tmp_path: Path, image: ImageInfo
) -> None:
    """web:1 by dockerd, containerd, podman and skopeo at once, digests checked."""

    def by_dockerd() -> str:
        clients.dockerd.pull("library/web:1")
        return str(clients.dockerd.inspect("library/web:1")["RepoDigests"])

    def by_containerd() -> str:
        ref = "docker.io/library/web:1"
        clients.containerd.pull("rl", ref)
        return clients.containerd.image_digest("rl", ref)

    def by_podman() -> str:
        clients.podman.pull("docker.io/library/web:1")
        return str(clients.podman.inspect("docker.io/library/web:1")["Digest"])

    def by_skopeo() -> str:
        out = tmp_path / "skopeo-429" / "out"
        skopeo_pull(docxy.hostport, "web:1", out)
        return (out / "manifest.json").read_text()

    results = at_once(by_dockerd, by_containerd, by_podman, by_skopeo)
    names = ["dockerd", "containerd", "podman"]
    for name, result in zip(names, results[:3], strict=True):
        assert image.digest in result, (name, result)
    manifest = json.loads(results[3])
    assert {layer["digest"] for layer in manifest["layers"]} <= set(image.blobs)


def test_every_client_pulls_cached_images_at_once_while_everything_answers_429(
    docxy_factory: DocxyFactory,
    faulty: FaultyUpstream,
    tmp_path: Path,
) -> None:
    image = faulty.images[WEB.ref]
    docxy = docxy_factory(faulty.url, "--cache-dir", str(tmp_path / "cache"))
    warm(docxy, tmp_path)
    with every_client(docxy.url, docxy.hostport) as clients:
        faulty.rate_limit(RETRY_AFTER)
        reached = len(faulty.requests())
        pull_web_with_every_client(clients, docxy, tmp_path, image)
        # Nothing got past the 429s, and Docxy did ask (it was no outage to
        # it); after the first 429 it stops asking (docxy.pull_budget).
        assert faulty.requests()[reached:] == []
        assert faulty.limited()
        assert "cache=offline" in docxy.log_text()


def test_a_429_to_the_access_check_lets_remembered_evidence_decide(
    docxy_factory: DocxyFactory, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    """A short auth TTL: every cached answer needs an access check, which gets 429."""
    image = faulty.images[WEB.ref]
    docxy = docxy_factory(
        faulty.url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--cache-auth-ttl",
        "0.001",
        "--cache-freshness",
        "0.001",
    )
    warm(docxy, tmp_path)
    with every_client(docxy.url, docxy.hostport) as clients:
        faulty.rate_limit(RETRY_AFTER)
        checks = len(faulty.limited())
        skopeo_pull(docxy.hostport, f"web@{image.digest}", tmp_path / "digest" / "out")
        # Every client by tag: stale tag, then the manifest by digest and
        # the blobs, each behind an access check that gets 429.
        pull_web_with_every_client(clients, docxy, tmp_path, image)
    assert "serving last known library/web:1" in docxy.log_text()
    # Docxy asked (the evidence had expired) and got 429s: evidence decided.
    assert len(faulty.limited()) > checks
    # Private content: an anonymous client has no evidence, so it gets the
    # 429 the upstream would give it, never the cached bytes.
    vault = faulty.images[VAULT.ref]
    for path in (
        "/v2/private/vault/manifests/1",
        f"/v2/private/vault/manifests/{vault.digest}",
        *(f"/v2/private/vault/blobs/{blob}" for blob in vault.blobs),
    ):
        response = fetch(docxy.url + path)
        assert_rate_limited(response.status, response.headers)
        assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS", path


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_uncached_content_gets_the_429_envelope_with_retry_after(
    docxy_factory: DocxyFactory, faulty: FaultyUpstream, tmp_path: Path, cache: bool
) -> None:
    args = ["--cache-dir", str(tmp_path / "cache")] if cache else []
    docxy = docxy_factory(faulty.url, *args)
    faulty.rate_limit(RETRY_AFTER)
    paths = [
        ("GET", "/v2/"),  # this Docxy never saw a challenge: nothing to answer with
        ("GET", "/v2/web/manifests/1"),
        ("HEAD", "/v2/web/manifests/1"),
        ("GET", f"/v2/web/manifests/{UNKNOWN}"),
        ("GET", f"/v2/web/blobs/{UNKNOWN}"),
        ("HEAD", f"/v2/web/blobs/{UNKNOWN}"),
        ("GET", "/v2/web/tags/list"),
    ]
    if not cache:  # with a cache, an offline token answers instead
        paths.append(("GET", "/auth/token?scope=repository:library/web:pull"))
    for method, path in paths:
        response = fetch(docxy.url + path, method)
        assert_rate_limited(response.status, response.headers)
        if method == "GET":
            assert response.header("Content-Type") == "application/json", path
            error = response.json()["errors"][0]
            assert error["code"] == "TOOMANYREQUESTS", (path, response.body)
            assert error["message"], path
    assert docxy.alive()
