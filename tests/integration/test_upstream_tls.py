"""Docxy in front of an https upstream with a private CA.

Why: mirrors of internal registries use private CAs. ``--upstream-ca`` must
make such an upstream work (registry and token realm alike), and without
it TLS verification must fail closed (502), never be silently disabled.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.digests import file_digest
from tests.support.docxy import DocxyFactory
from tests.support.envelope import assert_envelope
from tests.support.registry import Upstream, fetch, make_test_ca
from tests.support.skopeo import assert_pulled, skopeo_pull


def test_pull_with_upstream_ca(
    docxy_factory: DocxyFactory, tls_upstream: Upstream, tmp_path: Path
) -> None:
    """With the CA, skopeo pulls (token realm over https too) byte for byte."""
    assert tls_upstream.url.startswith("https://")
    assert tls_upstream.token_url.startswith("https://")
    assert tls_upstream.ca_path is not None
    docxy = docxy_factory(tls_upstream.url, "--upstream-ca", str(tls_upstream.ca_path))
    image = tls_upstream.images["library/multi:1.0"]
    tokens_before = len(tls_upstream.token_requests())
    out = tmp_path / "out"
    skopeo_pull(docxy.hostport, "multi:1.0", out, "--all")
    assert_pulled(out, image.blobs, manifest=image.digest)
    for digest in image.platform_digests.values():
        assert file_digest(out / (digest.split(":", 1)[1] + ".manifest.json")) == digest
    assert len(tls_upstream.token_requests()) > tokens_before
    paths = [p for _, p in tls_upstream.requests()]
    assert "/v2/library/multi/manifests/1.0" in paths


def test_untrusted_upstream_is_502(
    docxy_factory: DocxyFactory, tls_upstream: Upstream
) -> None:
    """Without --upstream-ca the upstream's cert is not trusted: 502, no request."""
    docxy = docxy_factory(tls_upstream.url)
    before = len(tls_upstream.requests())
    assert_envelope(fetch(docxy.url + "/v2/"), 502)
    assert_envelope(fetch(docxy.url + "/v2/library/alpine/manifests/3.20"), 502)
    # The TLS handshake failed, so the registry never saw an HTTP request.
    assert tls_upstream.requests()[before:] == []


def test_wrong_ca_is_502(
    docxy_factory: DocxyFactory, tls_upstream: Upstream, tmp_path: Path
) -> None:
    """A CA that did not sign the upstream's cert is not enough: 502."""
    other_ca, _, _ = make_test_ca(tmp_path / "other-pki")
    docxy = docxy_factory(tls_upstream.url, "--upstream-ca", str(other_ca))
    before = len(tls_upstream.requests())
    assert_envelope(fetch(docxy.url + "/v2/"), 502)
    assert tls_upstream.requests()[before:] == []
