"""Real container clients pull through Docxy: dockerd, containerd (ctr), podman.

Why: each client speaks to a mirror in its own way (dockerd pings ``/v2/``
first, containerd never does and adds ``?ns=docker.io``, podman GETs only),
and only the real binaries show whether Docxy satisfies them. Each client is
given a proxy that nothing listens on, so the silent fallback to
registry-1.docker.io fails and a passing pull proves Docxy served it. Every
pull is checked against the digest the upstream registry holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.support.clients import (
    Containerd,
    Dockerd,
    Podman,
    request_urls,
)
from tests.support.daemons import (
    containerd_through,
    dockerd_through,
    podman_through,
)
from tests.support.docxy import AccessLog, Docxy
from tests.support.registry import Upstream

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the container daemons need root"
)

# Challenges on repository paths name the upstream's own realm (containerd
# uses those); /v2/ names the mirror-wide /auth/token (dockerd, podman).
REPOSITORY_REALM = "/auth/docker.io/token"


def repo_digest_matches(repo_digests: list[str], repo: str, digest: str) -> bool:
    """Docker 20.10 shows familiar names (``alpine@...``), podman full ones."""
    short = repo.removeprefix("library/")
    wanted = {f"{repo}@{digest}", f"{short}@{digest}", f"docker.io/{repo}@{digest}"}
    return bool(wanted & set(repo_digests))


def upstream_saw(upstream: Upstream, method: str, path: str, since: int = 0) -> bool:
    return any(
        m == method and p.split("?", 1)[0] == path
        for m, p in upstream.requests()[since:]
    )


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerd(
    docxy: Docxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dockerd]:
    yield from dockerd_through(tmp_path_factory, "dockerd", docxy.url)


@pytest.fixture(scope="module")
def containerd(
    docxy: Docxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd]:
    yield from containerd_through(tmp_path_factory, "containerd", docxy.url)


@pytest.fixture(scope="module")
def podman(docxy: Docxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    yield from podman_through(tmp_path_factory, "podman", docxy.hostport)


# --- dockerd ----------------------------------------------------------------


def test_dockerd_pulls_through_docxy(
    dockerd: Dockerd, docxy: Docxy, upstream: Upstream
) -> None:
    """dockerd pings /v2/ first, then fetches manifest and blobs from Docxy."""
    image = upstream.images["library/alpine:3.20"]
    dockerd.remove("library/alpine:3.20")
    log = AccessLog(docxy)
    seen_upstream = len(upstream.requests())

    dockerd.pull("library/alpine:3.20")

    info = dockerd.inspect("library/alpine:3.20")
    assert repo_digest_matches(info["RepoDigests"], image.repo, image.digest), info[
        "RepoDigests"
    ]
    entries = log.entries()
    assert any(e.bare_path == "/v2/" for e in entries), log.dump()
    assert any(
        e.bare_path.startswith("/v2/library/alpine/manifests/") and e.status == 200
        for e in entries
    ), log.dump()
    assert any(
        e.method == "GET" and e.bare_path.startswith("/v2/library/alpine/blobs/sha256:")
        for e in entries
    ), log.dump()
    assert upstream_saw(
        upstream, "GET", f"/v2/library/alpine/manifests/{image.digest}", seen_upstream
    ) or upstream_saw(
        upstream, "GET", "/v2/library/alpine/manifests/3.20", seen_upstream
    )


@pytest.mark.parametrize("tag", ["1.0", "list"])
def test_dockerd_multi_arch_pull_picks_linux_amd64(
    dockerd: Dockerd, docxy: Docxy, upstream: Upstream, tag: str
) -> None:
    """OCI index and Docker manifest list: dockerd must get the amd64 instance."""
    image = upstream.images[f"library/multi:{tag}"]
    wanted = image.platform_digests["linux/amd64"]
    others = set(image.platform_digests.values()) - {wanted}
    assert others, "the multi-arch image should have more than one platform"
    dockerd.remove(f"library/multi:{tag}")
    log = AccessLog(docxy)

    dockerd.pull(f"library/multi:{tag}")

    info = dockerd.inspect(f"library/multi:{tag}")
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert repo_digest_matches(info["RepoDigests"], image.repo, image.digest), info[
        "RepoDigests"
    ]
    fetched = {e.bare_path for e in log.entries() if e.status == 200}
    assert f"/v2/library/multi/manifests/{wanted}" in fetched, log.dump()
    assert not {f"/v2/library/multi/manifests/{d}" for d in others} & fetched, (
        log.dump()
    )


def test_dockerd_private_image_with_hub_credentials(
    dockerd: Dockerd, docxy: Docxy, upstream: Upstream
) -> None:
    """dockerd sends the CLI's Docker Hub login to the mirror's token realm."""
    image = upstream.images["private/secret:1"]
    dockerd.remove("private/secret:1")
    try:
        dockerd.set_hub_credentials(None)
        denied = dockerd.pull("private/secret:1", check=False)
        assert denied.returncode != 0, denied.stdout

        dockerd.set_hub_credentials("alice", "secret")
        log = AccessLog(docxy)
        tokens_before = len(upstream.token_requests())
        dockerd.pull("private/secret:1")
    finally:
        dockerd.set_hub_credentials(None)

    info = dockerd.inspect("private/secret:1")
    assert repo_digest_matches(info["RepoDigests"], image.repo, image.digest), info[
        "RepoDigests"
    ]
    assert any(
        e.bare_path == "/auth/token" and e.status == 200 for e in log.entries()
    ), log.dump()
    new_tokens = upstream.token_requests()[tokens_before:]
    alice = [r for r in new_tokens if r["user"] == "alice"]
    assert alice, new_tokens
    params = [tuple(p) for p in alice[-1]["params"]]
    assert ("account", "alice") in params, alice[-1]
    assert ("scope", "repository:private/secret:pull") in params, alice[-1]


# --- containerd -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "namespace"),
    [("library/alpine:3.20", "alpine"), ("someuser/tool:latest", "tool")],
)
def test_containerd_pulls_with_ns_and_without_ping(
    containerd: Containerd,
    docxy: Docxy,
    upstream: Upstream,
    ref: str,
    namespace: str,
) -> None:
    """containerd's first request must get the challenge: it never pings /v2/."""
    image = upstream.images[ref]
    full_ref = f"docker.io/{ref}"
    tag = ref.rsplit(":", 1)[1]
    log = AccessLog(docxy)

    result = containerd.pull(namespace, full_ref)

    assert containerd.image_digest(namespace, full_ref) == image.digest
    # What ctr sent (its --debug log): all to Docxy, all with ns=docker.io.
    sent = request_urls(result.stdout + result.stderr)
    assert sent, result.stderr
    for _method, url in sent:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == docxy.url, url
        assert parts.path != "/v2/", url
        assert ("ns", "docker.io") in parse_qsl(parts.query), url
    assert sent[0] == (
        "HEAD",
        f"{docxy.url}/v2/{image.repo}/manifests/{tag}?ns=docker.io",
    ), sent
    # What Docxy received: no ping, the manifest and blobs, all served.
    entries = log.entries()
    assert not any(e.bare_path == "/v2/" for e in entries), log.dump()
    prefix = f"/v2/{image.repo}/"
    registry_requests = [e for e in entries if e.bare_path.startswith(prefix)]
    assert registry_requests, log.dump()
    # ctr 1.6 builds a fresh authorizer for resolve and for fetch, so 401
    # challenges come more than once; each request must succeed in the end.
    last_status = {(e.method, e.bare_path): e.status for e in registry_requests}
    assert all(s in (200, 307) for s in last_status.values()), log.dump()
    assert any(
        m == "GET" and p.startswith(f"/v2/{image.repo}/blobs/") for m, p in last_status
    ), log.dump()
    if any("?" in e.path for e in entries):  # Docxy logs query strings
        ns = ("ns", "docker.io")
        assert all(ns in e.query for e in registry_requests), log.dump()


def test_containerd_private_image_needs_credentials(
    containerd: Containerd, docxy: Docxy, upstream: Upstream
) -> None:
    """``ctr --user`` gets its token by OAuth2 POST, which Docxy must forward."""
    image = upstream.images["private/secret:1"]
    ref = "docker.io/private/secret:1"

    log = AccessLog(docxy)
    denied = containerd.pull("anonymous", ref, check=False)
    assert denied.returncode != 0, denied.stdout
    assert any(
        e.bare_path.startswith("/v2/private/secret/manifests/") and e.status == 401
        for e in log.entries()
    ), log.dump()

    log = AccessLog(docxy)
    tokens_before = len(upstream.token_requests())
    containerd.pull("alice", ref, user="alice:secret")

    assert containerd.image_digest("alice", ref) == image.digest
    assert any(
        e.method == "POST" and e.bare_path == REPOSITORY_REALM and e.status == 200
        for e in log.entries()
    ), log.dump()
    posts = [
        r for r in upstream.token_requests()[tokens_before:] if r["method"] == "POST"
    ]
    assert posts, upstream.token_requests()[tokens_before:]
    params = [tuple(p) for p in posts[-1]["params"]]
    assert ("grant_type", "password") in params, posts[-1]
    assert ("username", "alice") in params, posts[-1]
    assert ("scope", "repository:private/secret:pull") in params, posts[-1]


# --- podman -----------------------------------------------------------------


def test_podman_pulls_through_docxy(
    podman: Podman, docxy: Docxy, upstream: Upstream
) -> None:
    """podman pings /v2/ and GETs (no HEAD) the tag from the mirror."""
    image = upstream.images["library/alpine:3.20"]
    ref = "docker.io/library/alpine:3.20"
    podman.remove(ref)
    log = AccessLog(docxy)

    podman.pull(ref)

    info = podman.inspect(ref)
    assert info["Digest"] == image.digest
    assert f"docker.io/library/alpine@{image.digest}" in info["RepoDigests"]
    entries = log.entries()
    assert any(e.bare_path == "/v2/" for e in entries), log.dump()
    assert any(
        e.method == "GET"
        and e.bare_path == "/v2/library/alpine/manifests/3.20"
        and e.status == 200
        for e in entries
    ), log.dump()


def test_podman_private_image_with_mirror_credentials(
    podman: Podman, docxy: Docxy, upstream: Upstream
) -> None:
    """podman sends a mirror the authfile entry keyed by the mirror's host."""
    image = upstream.images["private/secret:1"]
    ref = "docker.io/private/secret:1"
    podman.remove(ref)
    podman.set_credentials(docxy.hostport, "alice", "secret")
    tokens_before = len(upstream.token_requests())
    log = AccessLog(docxy)
    try:
        podman.pull(ref)
    finally:
        podman.set_credentials(docxy.hostport, None)

    assert podman.inspect(ref)["Digest"] == image.digest
    assert any(
        e.bare_path == "/auth/token" and e.status == 200 for e in log.entries()
    ), log.dump()
    new_tokens = upstream.token_requests()[tokens_before:]
    alice = [r for r in new_tokens if r["user"] == "alice"]
    assert alice, new_tokens


def test_podman_https_probe_of_plain_port_fails_fast(
    podman: Podman, docxy: Docxy, upstream: Upstream
) -> None:
    """With ``insecure = true`` podman first tries https on Docxy's http port.

    A Go registry answers the TLS ClientHello with ``400 Bad Request`` and
    podman moves to http at once; a server that waits for an HTTP line
    ending stalls every pull until Go's 10 s TLS handshake timeout. Checked by
    the error podman reports for the https attempt, not by timing.
    """
    ref = "docker.io/library/alpine:3.20"
    podman.remove(ref)
    result = podman.podman(
        "--log-level=debug", "pull", "--signature-policy", str(podman.policy), ref
    )
    probe = f"Ping https://{docxy.hostport}/v2/"
    pings = [line for line in result.stderr.splitlines() if probe in line]
    assert pings, result.stderr[-4000:]
    assert "TLS handshake timeout" not in pings[0], pings[0]
    digest = upstream.images["library/alpine:3.20"].digest
    assert podman.inspect(ref)["Digest"] == digest
