"""skopeo pulls through Docxy from the real distribution registry.

Why: skopeo (containers/image, as podman and CRI-O) verifies every digest
and does the full bearer-token dance against whatever realm Docxy
advertises, so a pull that succeeds proves Docxy proxied challenge, token,
manifests and blobs byte for byte. Clients run with a dead proxy for
non-loopback traffic, so nothing can come from the internet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.digests import file_digest, sha256_digest
from tests.support.docxy import Docxy, DocxyFactory
from tests.support.images import ImageInfo
from tests.support.registry import Upstream
from tests.support.skopeo import assert_pulled, run_skopeo, skopeo_pull

# What skopeo prints when the registry (through Docxy) refused access.
AUTH_FAILURE = re.compile(r"unauthorized|authentication required|denied", re.I)
NOT_FOUND_OR_AUTH = re.compile(
    r"unauthorized|authentication required|denied|not found|manifest unknown|"
    r"name unknown",
    re.I,
)
# What skopeo prints when the proxy itself broke: must not be the reason.
PROXY_BREAKAGE = re.compile(
    r"connection refused|proxyconnect|EOF|internal server error|bad gateway|"
    r"\b50[0-4]\b|invalid character|malformed",
    re.I,
)


def assert_single_image(
    out: Path, image: ImageInfo, platform: str = "linux/amd64"
) -> None:
    """``out`` holds exactly ``image``'s manifest for ``platform`` and its blobs."""
    assert_pulled(
        out,
        [image.configs[platform], *image.layers[platform]],
        manifest=image.platform_digests[platform],
    )


def new_entries(before: int, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return entries[before:]


def scopes_of(entries: list[dict[str, Any]]) -> list[str]:
    return [v for e in entries for k, v in e["params"] if k == "scope"]


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------


def test_inspect_raw_by_tag_is_byte_exact(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """The manifest bytes skopeo gets through Docxy hash to upstream's digest."""
    image = upstream.images["library/alpine:3.20"]
    proc = run_skopeo(
        [
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{docxy.hostport}/library/alpine:3.20",
        ],
        tmp_path,
    )
    assert sha256_digest(proc.stdout.encode()) == image.digest


def test_inspect_reports_digest_and_layers(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """Plain ``inspect`` (manifest + config blob) agrees with upstream."""
    image = upstream.images["library/alpine:3.20"]
    proc = run_skopeo(
        [
            "inspect",
            "--tls-verify=false",
            f"docker://{docxy.hostport}/library/alpine:3.20",
        ],
        tmp_path,
    )
    doc = json.loads(proc.stdout)
    assert doc["Digest"] == image.digest
    assert doc["Layers"] == image.layers["linux/amd64"]
    assert doc["Architecture"] == "amd64"


def test_list_tags(docxy: Docxy, upstream: Upstream, tmp_path: Path) -> None:
    """``/tags/list`` is proxied (skopeo list-tags)."""
    proc = run_skopeo(
        ["list-tags", "--tls-verify=false", f"docker://{docxy.hostport}/library/multi"],
        tmp_path,
    )
    assert sorted(json.loads(proc.stdout)["Tags"]) == ["1.0", "list"]


# --------------------------------------------------------------------------
# copy
# --------------------------------------------------------------------------


def test_copy_by_tag(docxy: Docxy, upstream: Upstream, tmp_path: Path) -> None:
    """A Docker schema2 image with two layers arrives intact."""
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, "library/alpine:3.20", out)
    assert_single_image(out, upstream.images["library/alpine:3.20"])


def test_copy_by_digest(docxy: Docxy, upstream: Upstream, tmp_path: Path) -> None:
    """``name@sha256:...`` references are proxied too."""
    image = upstream.images["library/alpine:3.20"]
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, f"library/alpine@{image.digest}", out)
    assert_single_image(out, image)
    paths = [p for _, p in upstream.requests()]
    assert f"/v2/library/alpine/manifests/{image.digest}" in paths


@pytest.mark.parametrize("ref", ["library/multi:1.0", "library/multi:list"])
def test_copy_override_arch_arm64(
    docxy: Docxy, upstream: Upstream, tmp_path: Path, ref: str
) -> None:
    """From an OCI index / Docker list, skopeo picks and gets the arm64 manifest."""
    image = upstream.images[ref]
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, ref, out, global_flags=["--override-arch", "arm64"])
    assert_single_image(out, image, "linux/arm64")
    assert file_digest(out / "manifest.json") != image.platform_digests["linux/amd64"]


@pytest.mark.parametrize("ref", ["library/multi:1.0", "library/multi:list"])
def test_copy_all_platforms(
    docxy: Docxy, upstream: Upstream, tmp_path: Path, ref: str
) -> None:
    """``copy --all`` stores the index and every platform's manifest and blobs."""
    image = upstream.images[ref]
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, ref, out, "--all")
    assert file_digest(out / "manifest.json") == image.digest
    assert set(image.platform_digests) == {"linux/amd64", "linux/arm64"}
    for digest in image.platform_digests.values():
        instance = out / (digest.split(":", 1)[1] + ".manifest.json")
        assert instance.exists(), f"{digest} not copied"
        assert file_digest(instance) == digest
    assert_pulled(out, image.blobs)


def test_short_name_gets_library_prefix(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """``alpine:3.20`` maps to ``library/alpine`` in paths and token scopes."""
    image = upstream.images["library/alpine:3.20"]
    tokens_before = len(upstream.token_requests())
    requests_before = len(upstream.requests())
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, "alpine:3.20", out)
    assert_single_image(out, image)

    token_entries = new_entries(tokens_before, upstream.token_requests())
    assert token_entries, "no token was requested from the upstream realm"
    scopes = scopes_of(token_entries)
    assert "repository:library/alpine:pull" in scopes
    assert "repository:alpine:pull" not in scopes
    assert not any("library/library" in s for s in scopes)
    for entry in token_entries:
        services = [v for k, v in entry["params"] if k == "service"]
        assert services == [upstream.service], entry

    paths = [p for _, p in upstream.requests()[requests_before:]]
    assert "/v2/library/alpine/manifests/3.20" in paths
    assert not any(p.startswith("/v2/alpine/") for p in paths)


def test_copy_namespaced(docxy: Docxy, upstream: Upstream, tmp_path: Path) -> None:
    """``user/repo`` names are not prefixed and arrive intact (OCI manifest)."""
    requests_before = len(upstream.requests())
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, "someuser/tool:latest", out)
    assert_single_image(out, upstream.images["someuser/tool:latest"])
    paths = [p for _, p in upstream.requests()[requests_before:]]
    assert "/v2/someuser/tool/manifests/latest" in paths
    assert not any("/library/someuser" in p for p in paths)


def test_private_with_credentials(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """``--src-creds`` reach the upstream realm (Basic auth through Docxy)."""
    tokens_before = len(upstream.token_requests())
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, "private/secret:1", out, "--src-creds", "alice:secret")
    assert_single_image(out, upstream.images["private/secret:1"])
    users = [e["user"] for e in new_entries(tokens_before, upstream.token_requests())]
    assert "alice" in users


def test_private_without_credentials_fails_clearly(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """Anonymous pull of a private image fails with an auth error, not a proxy error."""
    out = tmp_path / "out"
    proc = skopeo_pull(docxy.hostport, "private/secret:1", out, check=False)
    assert proc.returncode != 0
    assert AUTH_FAILURE.search(proc.stderr), proc.stderr
    assert not PROXY_BREAKAGE.search(proc.stderr), proc.stderr
    assert not (out / "manifest.json").exists()


def test_private_with_wrong_password_fails(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """Bad credentials: the realm's 401 reaches skopeo as an auth failure."""
    out = tmp_path / "out"
    proc = skopeo_pull(
        docxy.hostport,
        "private/secret:1",
        out,
        "--src-creds",
        "alice:wrong",
        check=False,
    )
    assert proc.returncode != 0
    assert AUTH_FAILURE.search(proc.stderr), proc.stderr
    assert not (out / "manifest.json").exists()


def test_unknown_image_fails_clearly(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """An image that does not exist: unauthorized / not found, as from Hub."""
    out = tmp_path / "out"
    proc = skopeo_pull(docxy.hostport, "library/doesnotexist:1", out, check=False)
    assert proc.returncode != 0
    assert NOT_FOUND_OR_AUTH.search(proc.stderr), proc.stderr
    assert not PROXY_BREAKAGE.search(proc.stderr), proc.stderr


def test_unknown_tag_fails_clearly(
    docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    """A missing tag of an existing repository: manifest unknown."""
    out = tmp_path / "out"
    proc = skopeo_pull(docxy.hostport, "library/alpine:no-such-tag", out, check=False)
    assert proc.returncode != 0
    assert re.search(r"manifest unknown|not found", proc.stderr, re.I), proc.stderr


# --------------------------------------------------------------------------
# Through a CDN (blob GETs answered 307 upstream)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["library/alpine:3.20", "library/multi:1.0"])
def test_copy_through_cdn_redirects(
    docxy_factory: DocxyFactory, cdn_upstream: Upstream, tmp_path: Path, ref: str
) -> None:
    """Docxy follows the 307 itself: the CDN serves blobs, skopeo only sees Docxy."""
    docxy = docxy_factory(cdn_upstream.url)
    image = cdn_upstream.images[ref]
    cdn_before = len(cdn_upstream.cdn_entries())
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, ref, out, "--all")
    assert_pulled(out, image.blobs, manifest=image.digest)

    cdn = cdn_upstream.cdn_entries()[cdn_before:]
    fetched = {e.path.rsplit("/", 2)[-2] for e in cdn if e.method == "GET"}
    for blob in image.blobs:
        assert blob.split(":", 1)[1] in fetched, f"{blob} not fetched from the CDN"
    # Go's HTTP client sets Referer when it follows a redirect; a request
    # that skopeo itself sent to the CDN would carry Docxy's URL there.
    direct = [e for e in cdn if docxy.hostport in e.referer]
    assert not direct, f"skopeo went to the CDN directly: {direct}"
