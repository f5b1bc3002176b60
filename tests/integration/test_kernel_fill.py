"""Cold fills through the kernel: a plain TCP upstream with a Content-Length.

The body goes upstream socket -> pipe -> file (docxy/cache/kernel_fill.py),
is hashed from the page cache, and every client reads the growing file
(by sendfile here, plain TCP). What must hold is what holds for a fill
through Python: each client gets the exact blob, the upstream is asked
once, only a verified file is cached, and an upstream that breaks off
mid-body gives a short read and leaves nothing behind. The metric
``docxy_cache_kernel_fills_total`` shows which path a fill took.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import MID, MID_LAYER
from tests.support.blob_counts import blob_get_count, cached_blobs
from tests.support.blob_pull import open_blob, pull_token, read_all
from tests.support.digests import file_digest, sha256_digest
from tests.support.docxy import DocxyFactory, with_metrics
from tests.support.metrics import one, scrape
from tests.support.processes import wait_until
from tests.support.registry import Upstream, fetch
from tests.support.relay import GatedRelay


def test_concurrent_cold_clients_of_a_kernel_fill_get_the_blob_from_one_get(
    docxy_factory: DocxyFactory,
    mid_upstream: Upstream,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    docxy, metrics = with_metrics(
        docxy_factory, mid_upstream.url, "--cache-dir", str(cache)
    )
    layer = mid_upstream.images[MID.ref].layers["linux/amd64"][0]
    token = pull_token(docxy, MID.repo)
    before = len(mid_upstream.requests())

    def get(n: int) -> bytes:
        _, response = open_blob(docxy, MID.repo, layer, token)
        assert response.status == 200
        return read_all(response)

    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(get, range(4)))

    assert [sha256_digest(b) for b in bodies] == [layer] * 4
    assert blob_get_count(mid_upstream.requests()[before:], [layer]) == 1
    # The kernel path, not Python's.
    assert one(scrape(metrics), "docxy_cache_kernel_fills_total") == 1
    assert file_digest(cached_blobs(cache)[layer]) == layer
    assert list((cache / "tmp").iterdir()) == []
    # The upstream connection went back to the pool in a state to be reused.
    again = fetch(
        f"{docxy.url}/v2/{MID.repo}/manifests/{MID.tag}",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.oci.image.index.v1+json,"
            "application/vnd.oci.image.manifest.v1+json",
        },
    )
    assert again.status == 200


def test_an_upstream_cut_mid_kernel_fill_is_a_short_read_and_caches_nothing(
    docxy_factory: DocxyFactory,
    mid_upstream: Upstream,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    relay = GatedRelay(mid_upstream.registry.port)
    try:
        docxy, metrics = with_metrics(
            docxy_factory, relay.url, "--cache-dir", str(cache)
        )
        layer = mid_upstream.images[MID.ref].layers["linux/amd64"][0]
        token = pull_token(docxy, MID.repo)
        relay.hold_after(6 * 1024 * 1024)
        conns = [open_blob(docxy, MID.repo, layer, token) for _ in range(2)]
        wait_until(lambda: relay.held() == 1, 30, "the fill to be held mid-body")
        assert one(scrape(metrics), "docxy_cache_kernel_fills_total") == 1
        relay.go_down()  # the upstream connection is cut
        bodies = [read_all(response) for _, response in conns]
        assert all(len(body) < MID_LAYER for body in bodies), [len(b) for b in bodies]
        short, long = sorted(bodies, key=len)  # both the blob's beginning
        assert long[: len(short)] == short
        assert layer not in cached_blobs(cache)
        wait_until(
            lambda: list((cache / "tmp").iterdir()) == [], 30, "tmp/ to be empty"
        )
        assert "cache fill of" in docxy.log_text()
    finally:
        relay.close()
