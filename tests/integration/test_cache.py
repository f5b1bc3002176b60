"""The blob cache with the real registry and real clients: blobs cross the link once.

Upstream requests are counted in the registry's own access log. Where a test
must act while a fill is in flight, a :class:`GatedRelay` between Docxy and
the registry holds the upstream's body mid-way (a fill runs at the
upstream's pace, so on loopback it is otherwise over before a test can act).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import upstream_of
from tests.support.blob_counts import blob_get_count, cached_blobs
from tests.support.blob_pull import get_blob, open_blob, pull_token, read_all
from tests.support.clients import (
    CONTAINERD,
    CTR,
    DOCKER_CLI,
    DOCKERD,
    Containerd,
    Dockerd,
)
from tests.support.daemons import state_dir
from tests.support.digests import file_digest, sha256_digest
from tests.support.docxy import AccessLog, Docxy, DocxyFactory
from tests.support.images import ImageInfo, ImageSpec
from tests.support.processes import LOOPBACK, wait_until
from tests.support.registry import (
    Upstream,
)
from tests.support.relay import GatedRelay
from tests.support.skopeo import assert_pulled, skopeo_pull

# One image with one big layer of incompressible deterministic bytes.
BIG_LAYER = 200 * 1024 * 1024
BIG = ImageSpec("library/big", "1", layer_sizes=(BIG_LAYER,), seed="big")


def test_second_pull_and_restart_make_no_upstream_blob_gets(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:1.0"]
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    before = len(upstream.requests())
    skopeo_pull(docxy.hostport, "multi:1.0", tmp_path / "one", "--all")
    assert blob_get_count(upstream.requests()[before:], image.blobs) == len(image.blobs)

    middle = len(upstream.requests())
    skopeo_pull(docxy.hostport, "multi:1.0", tmp_path / "two", "--all")
    assert blob_get_count(upstream.requests()[middle:], image.blobs) == 0

    docxy.stop()
    restarted = docxy_factory(upstream.url, "--cache-dir", str(cache))
    after = len(upstream.requests())
    skopeo_pull(restarted.hostport, "multi:1.0", tmp_path / "three", "--all")
    assert blob_get_count(upstream.requests()[after:], image.blobs) == 0


def test_private_blobs_are_not_given_to_anonymous_clients(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["private/secret:1"]
    docxy = docxy_factory(upstream.url, "--cache-dir", str(tmp_path / "cache"))
    skopeo_pull(
        docxy.hostport,
        "private/secret:1",
        tmp_path / "alice",
        "--src-creds",
        "alice:secret",
    )
    # Each of alice's blobs is cached now; an anonymous client asking for
    # them directly gets the upstream's refusal, never the bytes.
    import urllib.error
    import urllib.request

    for blob in image.blobs:
        url = f"{docxy.url}/v2/private/secret/blobs/{blob}"
        try:
            urllib.request.urlopen(url, timeout=30)
            raise AssertionError(f"{blob} was served to an anonymous client")
        except urllib.error.HTTPError as e:
            assert e.code == 401
            assert e.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert "cache=miss" in docxy.log_text()


# --- helpers ------------------------------------------------------------------


def blobs_size(cache: Path) -> int:
    """Bytes of every file under ``DIR/blobs``."""
    return sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())


def biggest_layer(upstream: Upstream, image: ImageInfo) -> str:
    layers = [layer for platform in image.layers.values() for layer in platform]
    return max(layers, key=lambda d: len(upstream.blob_bytes(image.repo, d)))


def blob_lines(log: AccessLog, digest: str) -> list[str]:
    return [
        e.line
        for e in log.entries()
        if e.method == "GET" and e.bare_path.endswith(f"/blobs/{digest}")
    ]


# --- one big layer, ten clients at once ------------------------------------


@pytest.fixture(scope="module")
def big_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A registry of its own holding ``library/big:1`` (one 200 MiB layer)."""
    yield from upstream_of(tmp_path_factory, "big-upstream", [BIG])


def test_ten_concurrent_pulls_of_a_big_layer_make_one_upstream_get_per_blob(
    docxy_factory: DocxyFactory, big_upstream: Upstream, tmp_path: Path
) -> None:
    image = big_upstream.images[BIG.ref]
    layer = image.layers["linux/amd64"][0]
    docxy = docxy_factory(big_upstream.url, "--cache-dir", str(tmp_path / "cache"))
    log = AccessLog(docxy)
    before = len(big_upstream.requests())
    outs = [tmp_path / f"client-{n}" / "out" for n in range(10)]
    for out in outs:
        out.parent.mkdir()
    together = threading.Barrier(len(outs))

    def one_client(out: Path) -> None:
        together.wait()  # ten skopeo processes started at once
        skopeo_pull(docxy.hostport, "big:1", out)

    try:
        with ThreadPoolExecutor(len(outs)) as pool:
            list(pool.map(one_client, outs))  # raises the first failed pull
        for blob in image.blobs:
            assert blob_get_count(big_upstream.requests()[before:], [blob]) == 1, blob
        for out in outs:  # skopeo verified each digest; the files agree
            assert_pulled(out, image.blobs)
    finally:
        for out in outs:
            shutil.rmtree(out.parent, ignore_errors=True)
    served = blob_lines(log, layer)
    assert len(served) == 10, log.dump()
    assert all(" status=200 " in line for line in served), served
    assert sum("cache=miss" in line for line in served) == 1, served


# --- skopeo, then dockerd and containerd -----------------------------------


class ClientPulls:
    """What the upstream saw while dockerd, then containerd pulled a cached image."""

    def __init__(self, image: ImageInfo) -> None:
        self.image = image
        self.upstream: dict[str, list[tuple[str, str]]] = {}
        self.served: dict[str, list[str]] = {}  # Docxy's access-log lines


@pytest.fixture(scope="module")
def client_pulls(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClientPulls]:
    """``library/multi:1.0`` pulled with skopeo, then dockerd, then containerd."""
    if os.geteuid() != 0:
        pytest.skip("the container daemons need root")
    for binary in (DOCKERD, DOCKER_CLI, CONTAINERD, CTR):
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed")
    image = upstream.images["library/multi:1.0"]
    result = ClientPulls(image)
    base = state_dir(tmp_path_factory, "cache-clients")
    docxy = Docxy(
        upstream.url, base / "docxy.log", ["--cache-dir", str(base / "cache")]
    )
    try:
        before = len(upstream.requests())
        skopeo_pull(
            docxy.hostport, "multi:1.0", base / "skopeo" / "out"
        )  # this host: linux/amd64
        amd64 = [image.configs["linux/amd64"], *image.layers["linux/amd64"]]
        assert blob_get_count(upstream.requests()[before:], amd64) == len(amd64)

        mark, log = len(upstream.requests()), AccessLog(docxy)
        dockerd = Dockerd(base / "dockerd", [docxy.url])
        try:
            dockerd.pull("library/multi:1.0")
            digests = dockerd.inspect("library/multi:1.0")["RepoDigests"]
            assert any(d.endswith(f"@{image.digest}") for d in digests), digests
        finally:
            dockerd.stop()
        result.upstream["dockerd"] = upstream.requests()[mark:]
        result.served["dockerd"] = log.lines()

        mark, log = len(upstream.requests()), AccessLog(docxy)
        containerd = Containerd(base / "containerd")
        try:
            containerd.set_mirror(docxy.url)
            ref = "docker.io/library/multi:1.0"
            containerd.pull("cache", ref)
            assert containerd.image_digest("cache", ref) == image.digest
        finally:
            containerd.stop()
        result.upstream["containerd"] = upstream.requests()[mark:]
        result.served["containerd"] = log.lines()
        yield result
        assert docxy.alive(), docxy.log_text()[-3000:]
    finally:
        docxy.stop()
        shutil.rmtree(base / "skopeo", ignore_errors=True)


@pytest.mark.parametrize("client", ["dockerd", "containerd"])
def test_pulls_after_skopeo_make_no_upstream_blob_gets(
    client_pulls: ClientPulls, client: str
) -> None:
    saw = client_pulls.upstream[client]
    assert not [(m, p) for m, p in saw if m == "GET" and "/blobs/" in p], saw
    # ... and not because the client fetched nothing: Docxy served the blobs.
    amd64 = client_pulls.image.layers["linux/amd64"]
    lines = client_pulls.served[client]
    for layer in amd64:
        assert any(
            "method=GET" in line and layer in line and "cache=hit" in line
            for line in lines
        ), "\n".join(lines)


@pytest.mark.parametrize("client", ["dockerd", "containerd"])
def test_pulls_after_skopeo_make_no_upstream_manifest_gets(
    client_pulls: ClientPulls, client: str
) -> None:
    lines = client_pulls.served[client]
    assert any(
        "method=GET" in line and "/manifests/" in line and " status=200 " in line
        for line in lines
    ), "\n".join(lines)
    saw = client_pulls.upstream[client]
    assert not [(m, p) for m, p in saw if m == "GET" and "/manifests/" in p], saw


# --- size limit ---------------------------------------------------------------


def test_cache_stays_under_its_size_limit_while_pulling_more(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    limit = 512 * 1024
    cache = tmp_path / "cache"
    docxy = docxy_factory(
        upstream.url, "--cache-dir", str(cache), "--cache-max-size", "512K"
    )
    pulls = [
        ("alpine:3.20", "library/alpine:3.20", ()),
        ("multi:1.0", "library/multi:1.0", ("--all",)),
        ("someuser/tool:latest", "someuser/tool:latest", ()),
        ("alpine:3.20", "library/alpine:3.20", ()),
    ]
    pulled = 0
    for n, (name, key, flags) in enumerate(pulls):
        image = upstream.images[key]
        sizes = {b: len(upstream.blob_bytes(image.repo, b)) for b in image.blobs}
        assert sum(sizes.values()) <= limit, "each image alone must fit"
        pulled += sum(sizes.values())
        out = tmp_path / f"pull-{n}" / "out"
        skopeo_pull(
            docxy.hostport, name, out, *flags
        )  # succeeds, skopeo verified every blob
        assert_pulled(out, image.blobs)
        assert blobs_size(cache) <= limit, (name, blobs_size(cache))
        # Least recently used goes first: the image just pulled is all there.
        assert set(image.blobs) <= set(cached_blobs(cache)), name
    assert pulled > 2 * limit  # the test did pull more than the cache holds
    alpine = upstream.images["library/alpine:3.20"].blobs
    multi = upstream.images["library/multi:1.0"].blobs
    assert not set(multi) & set(cached_blobs(cache)), "multi was used least recently"
    assert set(alpine) <= set(cached_blobs(cache))


# --- kill -9 mid-fill -----------------------------------------------------------


def test_kill_9_during_a_fill_leaves_nothing_that_is_served(
    docxy_factory: DocxyFactory, big_upstream: Upstream, tmp_path: Path
) -> None:
    image = big_upstream.images[BIG.ref]
    layer = image.layers["linux/amd64"][0]
    cache = tmp_path / "cache"
    relay = GatedRelay(big_upstream.registry.port)
    reader = None
    try:
        docxy = docxy_factory(relay.url, "--cache-dir", str(cache))
        token = pull_token(docxy, BIG.repo)
        start = len(big_upstream.requests())
        relay.hold_after(8 * 1024 * 1024)  # the fill stops at ~8 of 200 MiB
        # A slow reader starts the fill: reads the head and a little, then stops.
        reader = socket.create_connection((LOOPBACK, docxy.port), timeout=60)
        reader.sendall(
            f"GET /v2/{BIG.repo}/blobs/{layer} HTTP/1.1\r\n"
            f"Host: {docxy.hostport}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        received = b""
        while b"\r\n\r\n" not in received or len(received) < 64 * 1024:
            data = reader.recv(64 * 1024)
            assert data, received[:300]
            received += data
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        wait_until(lambda: relay.held() == 1, 30, "the fill to be held mid-body")
        # The fill's file (and the length it announced to other workers).
        partial = sorted((cache / "tmp").glob("*.fill"))
        assert len(partial) == 1, partial
        assert 0 < partial[0].stat().st_size < BIG_LAYER
        assert layer not in cached_blobs(cache)

        docxy.kill()  # SIGKILL, the fill in flight
        docxy.popen.wait(30)
        docxy.stop()  # a deliberate death, not a crash
        assert sorted((cache / "tmp").glob("*.fill")) == partial  # a crash's leftover
        relay.release()
        # The registry logs the cut-off GET once its connection is gone.
        wait_until(
            lambda: blob_get_count(big_upstream.requests()[start:], [layer]) == 1,
            30,
            "the cut GET",
        )

        restarted = docxy_factory(relay.url, "--cache-dir", str(cache))
        assert list((cache / "tmp").iterdir()) == []
        assert layer not in cached_blobs(cache)
        before = len(big_upstream.requests())
        out = tmp_path / "healed" / "out"
        skopeo_pull(restarted.hostport, "big:1", out)
        assert (
            blob_get_count(big_upstream.requests()[before:], [layer]) == 1
        )  # not from the cache
        assert_pulled(out, image.blobs)
        assert file_digest(cached_blobs(cache)[layer]) == layer  # healed
    finally:
        if reader is not None:
            reader.close()
        relay.close()


# --- damage on disk ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_flipped_byte_in_a_cached_blob_is_never_served_as_that_digest(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path, where: str
) -> None:
    image = upstream.images["library/alpine:3.20"]
    layer = biggest_layer(upstream, image)  # more than one 256 KiB disk read
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    skopeo_pull(docxy.hostport, "alpine:3.20", tmp_path / "first" / "out")
    path = cached_blobs(cache)[layer]
    size = path.stat().st_size
    offset = 1000 if where == "first" else size - 1
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))

    token = pull_token(docxy, image.repo)
    status, length, body = get_blob(docxy, image.repo, layer, token)
    assert (status, length) == (200, size)
    assert not (len(body) == length and sha256_digest(body) != layer), (
        "a damaged cached file was served whole as its digest"
    )
    assert len(body) < size, "expected a short read"

    before = len(upstream.requests())
    out = tmp_path / "second" / "out"
    skopeo_pull(docxy.hostport, "alpine:3.20", out)
    assert blob_get_count(upstream.requests()[before:], [layer]) == 1  # refetched
    assert_pulled(out, image.blobs)
    assert file_digest(cached_blobs(cache)[layer]) == layer


# --- the access log ---------------------------------------------------------------


def test_access_log_says_miss_joined_and_hit(
    docxy_factory: DocxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    layer = biggest_layer(upstream, image)
    relay = GatedRelay(upstream.registry.port)
    opened: list[http.client.HTTPConnection] = []
    try:
        docxy = docxy_factory(relay.url, "--cache-dir", str(tmp_path / "cache"))
        token = pull_token(docxy, image.repo)
        log = AccessLog(docxy)
        relay.hold_after(64 * 1024)  # the fill stops after ~64 KiB
        conn, first = open_blob(docxy, image.repo, layer, token)  # the miss
        opened.append(conn)
        wait_until(lambda: relay.held() == 1, 30, "the fill to be held mid-body")
        # Headers of a joined request come at once, before the fill goes on.
        conn, second = open_blob(docxy, image.repo, layer, token)
        opened.append(conn)
        assert (first.status, second.status) == (200, 200)
        relay.release()
        for response in (first, second):
            assert sha256_digest(read_all(response)) == layer
        status, _, body = get_blob(docxy, image.repo, layer, token)  # the hit
        assert (status, sha256_digest(body)) == (200, layer)
        wait_until(lambda: len(blob_lines(log, layer)) == 3, 30, "three log lines")
    finally:
        for conn in opened:
            conn.close()
        relay.close()
    lines = blob_lines(log, layer)
    cache_fields = sorted(
        word for line in lines for word in line.split() if word.startswith("cache=")
    )
    assert cache_fields == ["cache=hit", "cache=joined", "cache=miss"], lines
