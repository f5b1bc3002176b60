"""The registry HTTP API through Docxy, request by request.

Why: clients differ in what they send (HEAD vs GET, Range, POST token
form), and several of Docxy's duties are invisible to a client that just
succeeds: rewriting every challenge, refusing writes and bad names before
anything reaches the upstream, fixed Content-Length, following CDN
redirects server-side. Plain http.client requests make each one visible.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest

from tests.support.digests import sha256_digest
from tests.support.docxy import Docxy, DocxyFactory
from tests.support.envelope import assert_envelope
from tests.support.processes import LOOPBACK, free_port
from tests.support.registry import (
    MANIFEST_ACCEPT,
    Upstream,
    basic_auth,
    challenge,
    fetch,
)

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def docxy_token(
    docxy: Docxy, scopes: list[str], creds: tuple[str, str] | None = None
) -> str:
    """A token the way a client gets one: challenge from /v2/, then the realm."""
    params = challenge(fetch(docxy.url + "/v2/"))
    query = urlencode([("service", params["service"]), *(("scope", s) for s in scopes)])
    headers = {"Authorization": basic_auth(*creds)} if creds else {}
    resp = fetch(f"{params['realm']}?{query}", headers=headers)
    assert resp.status == 200, (resp.status, resp.body)
    doc = resp.json()
    token: str = doc.get("token") or doc["access_token"]
    return token


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def upstream_paths(upstream: Upstream, since: int = 0) -> list[str]:
    return [p for _, p in upstream.requests()[since:]]


# --------------------------------------------------------------------------
# challenges and tokens
# --------------------------------------------------------------------------

# /v2/ names the mirror-wide realm; repository paths name the upstream's own
# (the test upstream stands in for Docker Hub, so it is named docker.io).
REPOSITORY_REALM = "/auth/docker.io/token"


def test_v2_challenge_points_at_docxy(docxy: Docxy, upstream: Upstream) -> None:
    """/v2/ answers the upstream's 401 with the realm rewritten to Docxy."""
    params = challenge(fetch(docxy.url + "/v2/"))
    assert params["realm"] == f"{docxy.url}/auth/token"
    assert params["service"] == upstream.service
    assert upstream.token_url not in json.dumps(params)


def test_v2_keeps_api_version_header(docxy: Docxy) -> None:
    """Clients look for Docker-Distribution-API-Version on the /v2/ ping."""
    resp = fetch(docxy.url + "/v2/")
    assert resp.header("Docker-Distribution-API-Version") == "registry/2.0"


def test_v2_with_token_is_200(docxy: Docxy) -> None:
    """The client's Bearer reaches the upstream on /v2/ (no challenge on 200)."""
    token = docxy_token(docxy, [])
    resp = fetch(docxy.url + "/v2/", headers=bearer(token))
    assert resp.status == 200, (resp.status, resp.body)
    assert resp.header("WWW-Authenticate") is None


@pytest.mark.parametrize(
    "path",
    ["/v2/library/alpine/manifests/3.20", "/v2/library/alpine/blobs/{blob}"],
)
def test_repository_401_is_rewritten_and_keeps_scope(
    docxy: Docxy, upstream: Upstream, path: str
) -> None:
    """A 401 on any repository path points at Docxy and keeps scope (containerd)."""
    blob = upstream.images["library/alpine:3.20"].blobs[0]
    params = challenge(fetch(docxy.url + path.format(blob=blob), method="HEAD"))
    assert params["realm"] == f"{docxy.url}{REPOSITORY_REALM}"
    assert params["service"] == upstream.service
    assert params["scope"] == "repository:library/alpine:pull"


def test_insufficient_scope_error_is_kept(docxy: Docxy) -> None:
    """A token without access: the rewritten challenge keeps its error=."""
    token = docxy_token(docxy, ["repository:library/doesnotexist:pull"])
    resp = fetch(
        docxy.url + "/v2/library/doesnotexist/manifests/1",
        headers=bearer(token, Accept=MANIFEST_ACCEPT),
    )
    params = challenge(resp)
    assert params["realm"] == f"{docxy.url}{REPOSITORY_REALM}"
    assert params["scope"] == "repository:library/doesnotexist:pull"
    assert params.get("error") == "insufficient_scope"


def test_short_name_challenge_and_token_flow(docxy: Docxy, upstream: Upstream) -> None:
    """``/v2/alpine/...``: challenge, token with its scope, then the manifest."""
    image = upstream.images["library/alpine:3.20"]
    params = challenge(fetch(docxy.url + "/v2/alpine/manifests/3.20", method="HEAD"))
    assert params["realm"] == f"{docxy.url}{REPOSITORY_REALM}"
    assert params["scope"] in (
        "repository:alpine:pull",
        "repository:library/alpine:pull",
    )
    token = docxy_token(docxy, [params["scope"]])
    resp = fetch(
        docxy.url + "/v2/alpine/manifests/3.20",
        headers=bearer(token, Accept=MANIFEST_ACCEPT),
    )
    assert resp.status == 200, (resp.status, resp.body)
    assert sha256_digest(resp.body) == image.digest


def test_token_get_forwards_params_in_order(docxy: Docxy, upstream: Upstream) -> None:
    """Every parameter reaches the realm in order, duplicates kept, scopes mapped."""
    before = len(upstream.token_requests())
    query = [
        ("account", "alice"),
        ("client_id", "docxy-tests"),
        ("offline_token", "true"),
        ("service", upstream.service),
        ("scope", "repository:alpine:pull"),
        ("scope", "repository:someuser/tool:pull"),
        ("scope", "repository:library/multi:pull"),
    ]
    resp = fetch(
        f"{docxy.url}/auth/token?{urlencode(query)}",
        headers={"Authorization": basic_auth("alice", "secret")},
    )
    assert resp.status == 200, (resp.status, resp.body)
    doc = resp.json()
    assert doc.get("token") or doc.get("access_token")
    assert doc.get("refresh_token"), doc  # offline_token=true with credentials
    entries = upstream.token_requests()[before:]
    assert len(entries) == 1, entries
    assert entries[0]["user"] == "alice"
    assert entries[0]["params"] == [
        ["account", "alice"],
        ["client_id", "docxy-tests"],
        ["offline_token", "true"],
        ["service", upstream.service],
        ["scope", "repository:library/alpine:pull"],
        ["scope", "repository:someuser/tool:pull"],
        ["scope", "repository:library/multi:pull"],
    ]


def test_token_bad_credentials_is_401(docxy: Docxy, upstream: Upstream) -> None:
    """The realm's 401 for a wrong password reaches the client as 401."""
    query = urlencode(
        [("service", upstream.service), ("scope", "repository:private/secret:pull")]
    )
    resp = fetch(
        f"{docxy.url}/auth/token?{query}",
        headers={"Authorization": basic_auth("alice", "wrong")},
    )
    assert resp.status == 401, (resp.status, resp.body)


def test_token_post_password_form(docxy: Docxy, upstream: Upstream) -> None:
    """The OAuth2 POST form (containerd with credentials) works through Docxy."""
    image = upstream.images["private/secret:1"]
    before = len(upstream.token_requests())
    form = urlencode(
        [
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret"),
            ("service", upstream.service),
            ("scope", "repository:private/secret:pull"),
            ("client_id", "docxy-tests"),
        ]
    ).encode()
    resp = fetch(
        docxy.url + "/auth/token",
        method="POST",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, (resp.status, resp.body)
    doc = resp.json()
    token = doc.get("access_token") or doc["token"]
    assert doc.get("refresh_token")
    entries = upstream.token_requests()[before:]
    assert [e["method"] for e in entries] == ["POST"]
    keys = [k for k, _ in entries[0]["params"]]
    assert keys == [
        "grant_type",
        "username",
        "password",
        "service",
        "scope",
        "client_id",
    ]

    manifest = fetch(
        docxy.url + "/v2/private/secret/manifests/1",
        headers=bearer(token, Accept=MANIFEST_ACCEPT),
    )
    assert manifest.status == 200, (manifest.status, manifest.body)
    assert sha256_digest(manifest.body) == image.digest

    refresh = urlencode(
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", doc["refresh_token"]),
            ("service", upstream.service),
            ("scope", "repository:private/secret:pull"),
            ("client_id", "docxy-tests"),
        ]
    ).encode()
    again = fetch(
        docxy.url + "/auth/token",
        method="POST",
        body=refresh,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert again.status == 200, (again.status, again.body)


# --------------------------------------------------------------------------
# manifests and blobs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "library/alpine:3.20",
        "library/multi:1.0",
        "library/multi:list",
        "someuser/tool:latest",
    ],
)
def test_head_manifest_matches_get(docxy: Docxy, upstream: Upstream, ref: str) -> None:
    """HEAD carries exactly the GET's Content-Length, digest and type (Docker 29)."""
    image = upstream.images[ref]
    repo, tag = ref.split(":")
    token = docxy_token(docxy, [f"repository:{repo}:pull"])
    url = f"{docxy.url}/v2/{repo}/manifests/{tag}"
    head = fetch(url, method="HEAD", headers=bearer(token, Accept=MANIFEST_ACCEPT))
    get = fetch(url, headers=bearer(token, Accept=MANIFEST_ACCEPT))
    assert get.status == 200 and head.status == 200, (get.status, head.status)
    assert sha256_digest(get.body) == image.digest
    assert get.header("Content-Type") == image.media_type
    assert head.header("Content-Length") == str(len(get.body))
    assert get.header("Content-Length") == str(len(get.body))
    assert (
        head.header("Docker-Content-Digest")
        == get.header("Docker-Content-Digest")
        == image.digest
    )
    assert head.header("Content-Type") == get.header("Content-Type")


def test_manifest_by_digest_for_one_platform(docxy: Docxy, upstream: Upstream) -> None:
    """A platform manifest fetched by digest is byte-exact (index -> arm64)."""
    image = upstream.images["library/multi:1.0"]
    digest = image.platform_digests["linux/arm64"]
    token = docxy_token(docxy, ["repository:library/multi:pull"])
    resp = fetch(
        f"{docxy.url}/v2/library/multi/manifests/{digest}",
        headers=bearer(token, Accept=MANIFEST_ACCEPT),
    )
    assert resp.status == 200
    assert resp.body == image.manifests[digest]
    assert resp.header("Docker-Content-Digest") == digest


def largest_layer(upstream: Upstream) -> tuple[str, bytes]:
    image = upstream.images["library/alpine:3.20"]
    blobs = {b: upstream.blob_bytes(image.repo, b) for b in image.layers["linux/amd64"]}
    digest = max(blobs, key=lambda b: len(blobs[b]))
    return digest, blobs[digest]


def test_blob_range_is_206(docxy: Docxy, upstream: Upstream) -> None:
    """Range is forwarded and 206 passed through (resumed downloads)."""
    digest, data = largest_layer(upstream)
    token = docxy_token(docxy, ["repository:library/alpine:pull"])
    resp = fetch(
        f"{docxy.url}/v2/library/alpine/blobs/{digest}",
        headers=bearer(token, Range="bytes=10-99"),
    )
    assert resp.status == 206, (resp.status, resp.headers)
    assert resp.header("Content-Range") == f"bytes 10-99/{len(data)}"
    assert len(resp.body) == 90
    assert resp.body == data[10:100]


@pytest.mark.parametrize("variant", ["upstream", "cdn_upstream"])
def test_blob_get_full_with_fixed_length(
    docxy_factory: DocxyFactory, request: pytest.FixtureRequest, variant: str
) -> None:
    """Full blob: 200, exact bytes, fixed Content-Length, never a Location."""
    up: Upstream = request.getfixturevalue(variant)
    docxy = docxy_factory(up.url)
    digest, data = largest_layer(up)
    cdn_before = len(up.cdn_entries()) if up.cdn else 0
    token = docxy_token(docxy, ["repository:library/alpine:pull"])
    url = f"{docxy.url}/v2/library/alpine/blobs/{digest}"

    resp = fetch(url, headers=bearer(token))
    assert resp.status == 200, (resp.status, resp.headers)
    assert resp.header("Location") is None
    assert resp.header("Transfer-Encoding") is None, resp.headers
    assert resp.header("Content-Length") == str(len(data))
    assert sha256_digest(resp.body) == digest

    head = fetch(url, method="HEAD", headers=bearer(token))
    assert head.status == 200, (head.status, head.headers)
    assert head.header("Location") is None
    assert head.header("Content-Length") == str(len(data))

    if up.cdn:
        cdn = up.cdn_entries()[cdn_before:]
        assert any(e.method == "GET" and digest.split(":")[1] in e.path for e in cdn), (
            cdn
        )
        # The upstream registry answered that GET with its 307.
        hits = [e for e in up.registry_entries() if e.path.endswith(f"/blobs/{digest}")]
        assert any(e.status == 307 for e in hits), hits


def test_cdn_range_is_206(docxy_factory: DocxyFactory, cdn_upstream: Upstream) -> None:
    """Range survives the redirect: Docxy forwards it to the CDN."""
    docxy = docxy_factory(cdn_upstream.url)
    digest, data = largest_layer(cdn_upstream)
    token = docxy_token(docxy, ["repository:library/alpine:pull"])
    resp = fetch(
        f"{docxy.url}/v2/library/alpine/blobs/{digest}",
        headers=bearer(token, Range="bytes=10-99"),
    )
    assert resp.status == 206, (resp.status, resp.headers)
    assert resp.header("Location") is None
    assert resp.body == data[10:100]


# --------------------------------------------------------------------------
# refusals: nothing may reach the upstream
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("PUT", "/v2/library/alpine/manifests/3.20"),
        ("DELETE", "/v2/library/alpine/manifests/3.20"),
        ("PATCH", "/v2/library/alpine/blobs/uploads/abc"),
    ],
)
def test_writes_are_405_unsupported(
    docxy: Docxy, upstream: Upstream, method: str, path: str
) -> None:
    """A mirror is read-only: writes are refused and never forwarded."""
    before = len(upstream.requests())
    resp = fetch(
        docxy.url + path,
        method=method,
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert_envelope(resp, 405, "UNSUPPORTED")
    assert not [r for r in upstream.requests()[before:] if r[0] not in ("GET", "HEAD")]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/manifests/xbadname",
        "/v2/a/../b/manifests/xbadname",
        "/v2/a%2Fb/manifests/xbadname",
        "/v2/library/alp..ine/manifests/xbadname",
        "/v2/-alpine/manifests/xbadname",
    ],
)
def test_bad_name_is_400_name_invalid(
    docxy: Docxy, upstream: Upstream, path: str
) -> None:
    """Invalid repository names are refused before anything goes upstream."""
    resp = fetch(docxy.url + path)
    assert_envelope(resp, 400, "NAME_INVALID")
    assert not [p for p in upstream_paths(upstream) if "xbadname" in p]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/alpine/blobs/sha256:xyz",
        "/v2/library/alpine/blobs/notadigest",
        "/v2/library/alpine/blobs/sha256:" + "0" * 63,
    ],
)
def test_bad_digest_is_400_digest_invalid(
    docxy: Docxy, upstream: Upstream, path: str
) -> None:
    """Malformed blob digests are refused before anything goes upstream."""
    resp = fetch(docxy.url + path)
    assert_envelope(resp, 400, "DIGEST_INVALID")
    bad = path.rsplit("/", 1)[1]
    assert not [p for p in upstream_paths(upstream) if p.endswith("/" + bad)]


@pytest.mark.parametrize(
    "path",
    ["/nothing-here", "/v2/library/alpine/bogus/x", "/v1/search?q=x", "/v2/_catalogue"],
)
def test_unknown_path_is_404_envelope(docxy: Docxy, path: str) -> None:
    """Only registry routes are served (not an open proxy); errors use the envelope."""
    assert_envelope(fetch(docxy.url + path), 404)


def test_unreachable_upstream_is_502(docxy_factory: DocxyFactory) -> None:
    """Nothing listens upstream: 502 with the envelope, not 500 or a hang."""
    docxy = docxy_factory(f"http://{LOOPBACK}:{free_port()}")
    assert_envelope(fetch(docxy.url + "/v2/"), 502)
    assert_envelope(fetch(docxy.url + "/v2/library/alpine/manifests/3.20"), 502)


def test_health(docxy: Docxy) -> None:
    """/health answers 200 while the upstream is up."""
    assert fetch(docxy.url + "/health").status == 200


def test_envelopes_leak_no_internals(docxy: Docxy) -> None:
    """Error messages carry no Python traceback or exception text."""
    for resp in (
        fetch(docxy.url + "/v2/UPPER/manifests/x"),
        fetch(docxy.url + "/nothing-here"),
        fetch(docxy.url + "/v2/library/alpine/blobs/uploads/", method="POST"),
    ):
        text = resp.body.decode("utf-8", "replace")
        assert not re.search(r"Traceback|File \"|Exception|Error\(", text), text
