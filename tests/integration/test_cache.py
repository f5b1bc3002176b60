"""The blob cache with the real registry and skopeo: blobs cross the link once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support.docxy import Docxy
from tests.support.images import run_skopeo
from tests.support.registry import Upstream

Factory = Callable[..., Docxy]


def pull(docxy: Docxy, name: str, out: Path, *flags: str) -> None:
    """skopeo copy (it verifies every digest) of ``name`` through ``docxy``."""
    run_skopeo(
        [
            "copy",
            "--src-tls-verify=false",
            *flags,
            f"docker://{docxy.hostport}/{name}",
            f"dir:{out}",
        ],
        out.parent,
    )


def blob_gets(upstream: Upstream, since: int, blobs: list[str]) -> int:
    return sum(
        1
        for method, path in upstream.requests()[since:]
        if method == "GET" and any(path.split("?")[0].endswith(b) for b in blobs)
    )


def test_second_pull_and_restart_make_no_upstream_blob_gets(
    docxy_factory: Factory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/multi:1.0"]
    cache = tmp_path / "cache"
    docxy = docxy_factory(upstream.url, "--cache-dir", str(cache))
    before = len(upstream.requests())
    pull(docxy, "multi:1.0", tmp_path / "one", "--all")
    assert blob_gets(upstream, before, image.blobs) == len(image.blobs)

    middle = len(upstream.requests())
    pull(docxy, "multi:1.0", tmp_path / "two", "--all")
    assert blob_gets(upstream, middle, image.blobs) == 0

    docxy.stop()
    restarted = docxy_factory(upstream.url, "--cache-dir", str(cache))
    after = len(upstream.requests())
    pull(restarted, "multi:1.0", tmp_path / "three", "--all")
    assert blob_gets(upstream, after, image.blobs) == 0


def test_private_blobs_are_not_given_to_anonymous_clients(
    docxy_factory: Factory, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["private/secret:1"]
    docxy = docxy_factory(upstream.url, "--cache-dir", str(tmp_path / "cache"))
    pull(docxy, "private/secret:1", tmp_path / "alice", "--src-creds", "alice:secret")
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
