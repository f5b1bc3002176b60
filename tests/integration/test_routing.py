"""One Docxy for every registry: routing by ``ns``, path prefix and Host (issue 4).

Why: a node's containerd sends ``?ns=<registry>``, podman and CRI-O put a
path prefix into the repository name, and people who pull from a mirror's
own host name send only a Host header. One Docxy must send each request to
the right upstream, hand out that upstream's token, and never let a request
make it contact anything that is not configured.

Three real distribution registries, each with its own token service (own
signing key and ``service`` name), stand in for docker.io, ghcr.io and
quay.io. Each holds an image the others do not; docker.io also holds a decoy
``org/quayapp:2`` with other content than quay.io's, so a request that
lands on the wrong upstream shows up as a wrong digest, not just an error.
The real clients (containerd's ``ctr``, podman, skopeo, dockerd) get a
proxy that nothing listens on, so a passing pull proves Docxy served it.

Whether a request reached an upstream is read from the upstreams' own
access logs and token logs; a sentinel TCP listener stands for "a host that
is not configured" and must never see a connection.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.support.clients import (
    CONTAINERD,
    CTR,
    DOCKER_CLI,
    DOCKERD,
    PODMAN,
    Containerd,
    Dockerd,
    Podman,
    request_urls,
    response_headers,
)
from tests.support.daemons import running
from tests.support.digests import sha256_digest
from tests.support.docxy import AccessLog, Docxy
from tests.support.envelope import assert_envelope
from tests.support.images import ImageInfo, ImageSpec, populate
from tests.support.processes import LOOPBACK, wait_until
from tests.support.registry import (
    MANIFEST_ACCEPT,
    Response,
    Upstream,
    challenge,
    fetch,
    start_upstream,
)
from tests.support.skopeo import assert_pulled, skopeo_pull

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the container daemons need root"
)

DOCKER_IO = "docker.io"
GHCR = "ghcr.io"
QUAY = "quay.io"

# What each stand-in registry holds. Seeds make the two org/quayapp:2 differ.
IMAGES: dict[str, tuple[ImageSpec, ...]] = {
    DOCKER_IO: (
        ImageSpec(
            "library/alpine",
            "3.20",
            layer_sizes=(96 * 1024,),
            format="v2s2",
            seed="hub-alpine",
        ),
        ImageSpec("org/quayapp", "2", layer_sizes=(48 * 1024,), seed="hub-decoy"),
        # A Docker Hub user named like the "quay" alias.
        ImageSpec("quay/hubimage", "1", layer_sizes=(16 * 1024,), seed="hub-quay"),
    ),
    GHCR: (
        ImageSpec("owner/ghtool", "1", layer_sizes=(64 * 1024,), seed="ghcr"),
        # Only pulled through a /ghcr host URL: containerd shares content
        # between its namespaces and would not fetch ghtool's blobs again.
        ImageSpec("owner/ghpath", "1", layer_sizes=(32 * 1024,), seed="ghcr-path"),
    ),
    QUAY: (ImageSpec("org/quayapp", "2", layer_sizes=(80 * 1024,), seed="quay"),),
}
# Distinct token services: a token or a service name from the wrong
# upstream is refused, and a challenge tells which upstream answered.
SERVICES = {
    DOCKER_IO: "hub-test-registry",
    GHCR: "ghcr-test-registry",
    QUAY: "quay-test-registry",
}
# The realm paths Docxy names in challenges on repository paths, per upstream.
REALM_PATHS = {
    DOCKER_IO: "/auth/docker.io/token",
    GHCR: "/auth/ghcr.io/token",
    QUAY: "/auth/quay.io/token",
}
# ... and on /v2/: the default upstream's is the mirror-wide /auth/token.
PING_REALM_PATHS = {**REALM_PATHS, DOCKER_IO: "/auth/token"}


# --------------------------------------------------------------------------
# The sentinel: a host that is not configured
# --------------------------------------------------------------------------


class Sentinel:
    """A loopback TCP listener that records every connection made to it.

    It stands for any host that is not a configured upstream: whatever a
    client puts in ``ns``, a path or a Host header, Docxy must never connect
    here.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.hostport = f"{LOOPBACK}:{self.port}"
        self.contacts: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:  # closed
                return
            with self.lock:
                self.contacts.append(peer)
            conn.close()

    def seen(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.contacts)

    def self_check(self) -> None:
        """Prove the sentinel notices a connection, then forget it."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5):
            pass
        wait_until(lambda: len(self.seen()) == 1, 10.0, "the sentinel to notice")
        with self.lock:
            self.contacts.clear()

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown does.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the sentinel's thread did not stop"


# --------------------------------------------------------------------------
# Three upstreams and one Docxy
# --------------------------------------------------------------------------


@dataclass
class Fleet:
    """The three upstreams, the Docxy in front of them, and the sentinel."""

    upstreams: dict[str, Upstream]
    docxy: Docxy
    sentinel: Sentinel
    images: dict[str, dict[str, ImageInfo]] = field(default_factory=dict)

    def image(self, registry: str, ref: str) -> ImageInfo:
        return self.images[registry][ref]

    def mark(self) -> Mark:
        """Where every upstream's request and token logs are now."""
        return Mark(
            {name: len(u.requests()) for name, u in self.upstreams.items()},
            {name: len(u.token_requests()) for name, u in self.upstreams.items()},
        )

    def new_requests(self, since: Mark) -> dict[str, list[tuple[str, str]]]:
        """(method, path) each upstream registry received after ``since``."""
        return {
            name: u.requests()[since.requests[name] :]
            for name, u in self.upstreams.items()
        }

    def new_tokens(self, since: Mark) -> dict[str, list[dict[str, Any]]]:
        """Each token service's log entries after ``since``."""
        return {
            name: u.token_requests()[since.tokens[name] :]
            for name, u in self.upstreams.items()
        }


@dataclass(frozen=True)
class Mark:
    requests: dict[str, int]
    tokens: dict[str, int]


def docxy_config(upstreams: Mapping[str, Upstream]) -> str:
    """The TOML file: presets give each its namespaces; aliases and hosts added."""
    return (
        'default-upstream = "docker.io"\n\n'
        '[upstreams."docker.io"]\n'
        f'url = "{upstreams[DOCKER_IO].url}"\n\n'
        '[upstreams."ghcr.io"]\n'
        f'url = "{upstreams[GHCR].url}"\n'
        'aliases = ["ghcr", "ghcr.io"]\n\n'
        '[upstreams."quay.io"]\n'
        f'url = "{upstreams[QUAY].url}"\n'
        'aliases = ["quay", "quay.io"]\n'
        'hosts = ["localhost"]\n'
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("routing")
    sentinel = Sentinel()
    upstreams: dict[str, Upstream] = {}
    docxy: Docxy | None = None
    try:
        sentinel.self_check()
        images: dict[str, dict[str, ImageInfo]] = {}
        for registry, specs in IMAGES.items():
            up = start_upstream(
                workdir / registry,
                sorted({spec.repo for spec in specs}),
                service=SERVICES[registry],
            )
            upstreams[registry] = up
            up.images = populate(up, workdir / registry / "images", specs)
            images[registry] = up.images
        config = workdir / "docxy.toml"
        config.write_text(docxy_config(upstreams))
        # --upstream sets the default upstream's URL: the same as the file's.
        docxy = Docxy(
            upstreams[DOCKER_IO].url, workdir / "docxy.log", ["--config", str(config)]
        )
        yield Fleet(upstreams, docxy, sentinel, images)
        assert docxy.alive(), f"Docxy died:\n{docxy.log_text()[-3000:]}"
    finally:
        if docxy is not None:
            docxy.stop()
        for up in upstreams.values():
            up.stop()
        sentinel.close()


@pytest.fixture
def sentinel(fleet: Fleet) -> Iterator[Sentinel]:
    """The sentinel, checked after the test: nothing may have connected."""
    before = len(fleet.sentinel.seen())
    yield fleet.sentinel
    new = fleet.sentinel.seen()[before:]
    assert new == [], f"this test made something connect to the sentinel: {new}"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def request(
    docxy: Docxy,
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """One request to Docxy with ``path`` sent exactly as given (no encoding).

    A ``Host`` in ``headers`` replaces the one http.client would send.
    """
    return fetch(docxy.url + path, method=method, headers=headers)


def raw_request(docxy: Docxy, method: str, target: str, host: str) -> Response:
    """A request line http.client would not build from a URL (absolute-form)."""
    conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def token_from(realm: str, params: Mapping[str, str]) -> str:
    """A token from the realm a challenge named, for the scope it named."""
    query = [("service", params["service"])]
    if "scope" in params:
        query.append(("scope", params["scope"]))
    resp = fetch(f"{realm}?{urlencode(query)}")
    assert resp.status == 200, (realm, resp.status, resp.body)
    doc = resp.json()
    token: str = doc.get("token") or doc["access_token"]
    return token


def paths_of(requests: Sequence[tuple[str, str]]) -> list[str]:
    return [path.split("?", 1)[0] for _method, path in requests]


def mentions(requests: Sequence[tuple[str, str]], needle: str) -> list[str]:
    return [p for _m, p in requests if needle in p]


def scopes_of(tokens: Sequence[dict[str, Any]]) -> list[str]:
    return [v for entry in tokens for k, v in entry["params"] if k == "scope"]


def assert_pulled_from(
    fleet: Fleet,
    since: Mark,
    registry: str,
    image: ImageInfo,
    allowed_elsewhere: Sequence[tuple[str, str]] = (),
) -> None:
    """The image's manifest and blobs came from ``registry``'s upstream only.

    The other upstreams saw nothing at all (except ``allowed_elsewhere``,
    e.g. the ``/v2/`` ping a podman mirror answers from the default), no
    upstream saw the mirror-only ``ns`` parameter, and only ``registry``'s
    token service issued a token for the repository.
    """
    new = fleet.new_requests(since)
    right = new[registry]
    got = paths_of(right)
    assert any(p.startswith(f"/v2/{image.repo}/manifests/") for p in got), right
    for blob in image.blobs:
        assert ("GET", f"/v2/{image.repo}/blobs/{blob}") in right, (blob, right)
    for name, seen in new.items():
        if name != registry:
            unexpected = [r for r in seen if r not in allowed_elsewhere]
            assert unexpected == [], f"{name} upstream got {unexpected}"
        for _method, path in seen:
            query = parse_qsl(urlsplit(path).query)
            assert not any(k == "ns" for k, _ in query), path
    tokens = fleet.new_tokens(since)
    wanted = f"repository:{image.repo}:pull"
    assert wanted in scopes_of(tokens[registry]), tokens[registry]
    for entry in tokens[registry]:
        assert ["service", SERVICES[registry]] in entry["params"], entry
    for name, entries in tokens.items():
        if name != registry:
            assert entries == [], f"{name} token service got {entries}"


# --------------------------------------------------------------------------
# Direct HTTP: every route reaches the right upstream, with its own realm
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteCase:
    id: str
    path: str  # "{port}" is Docxy's port
    registry: str  # the upstream that must answer
    ref: str  # the image there
    host: str | None = None  # Host header; None: 127.0.0.1:<port>
    namespace: str | None = None  # expected OCI-Namespace


ROUTE_CASES = [
    RouteCase(
        "ns=ghcr.io",
        "/v2/owner/ghtool/manifests/1?ns=ghcr.io",
        GHCR,
        "owner/ghtool:1",
        namespace="ghcr.io",
    ),
    RouteCase(
        "ns=quay.io",
        "/v2/org/quayapp/manifests/2?ns=quay.io",
        QUAY,
        "org/quayapp:2",
        namespace="quay.io",
    ),
    RouteCase(
        "ns=docker.io",
        "/v2/library/alpine/manifests/3.20?ns=docker.io",
        DOCKER_IO,
        "library/alpine:3.20",
        namespace="docker.io",
    ),
    RouteCase(
        "ns=index.docker.io short name",
        "/v2/alpine/manifests/3.20?ns=index.docker.io",
        DOCKER_IO,
        "library/alpine:3.20",
        namespace="index.docker.io",
    ),
    RouteCase(
        "ns wins over Host",
        "/v2/org/quayapp/manifests/2?ns=docker.io",
        DOCKER_IO,
        "org/quayapp:2",
        host="localhost",
        namespace="docker.io",
    ),
    RouteCase(
        "containerd host path /ghcr/v2/",
        "/ghcr/v2/owner/ghtool/manifests/1",
        GHCR,
        "owner/ghtool:1",
    ),
    RouteCase(
        "containerd host path /quay.io/v2/",
        "/quay.io/v2/org/quayapp/manifests/2",
        QUAY,
        "org/quayapp:2",
    ),
    RouteCase(
        "registry host in path /v2/ghcr.io/",
        "/v2/ghcr.io/owner/ghtool/manifests/1",
        GHCR,
        "owner/ghtool:1",
    ),
    RouteCase(
        "podman prefix /v2/ghcr/",
        "/v2/ghcr/owner/ghtool/manifests/1",
        GHCR,
        "owner/ghtool:1",
    ),
    RouteCase(
        "podman prefix /v2/quay/",
        "/v2/quay/org/quayapp/manifests/2",
        QUAY,
        "org/quayapp:2",
    ),
    RouteCase(
        "registry host in path /v2/docker.io/ short name",
        "/v2/docker.io/alpine/manifests/3.20",
        DOCKER_IO,
        "library/alpine:3.20",
    ),
    RouteCase(
        "Host localhost",
        "/v2/org/quayapp/manifests/2",
        QUAY,
        "org/quayapp:2",
        host="localhost:{port}",
    ),
    RouteCase(
        "Host normalised",
        "/v2/org/quayapp/manifests/2",
        QUAY,
        "org/quayapp:2",
        host="LocalHost.:{port}",
    ),
    RouteCase(
        "default upstream",
        "/v2/org/quayapp/manifests/2",
        DOCKER_IO,
        "org/quayapp:2",
    ),
    RouteCase(
        "default upstream short name",
        "/v2/alpine/manifests/3.20",
        DOCKER_IO,
        "library/alpine:3.20",
    ),
]


# A Docker Hub repository whose first component is another upstream's alias
# stays on Docker Hub when the request says so (ns=docker.io): its challenge
# names Docker Hub's own realm, which strips only Docker Hub's aliases.
ROUTE_PARAMS = [
    *(pytest.param(c, id=c.id) for c in ROUTE_CASES),
    pytest.param(
        RouteCase(
            "ns=docker.io keeps a Hub name that starts like an alias",
            "/v2/quay/hubimage/manifests/1?ns=docker.io",
            DOCKER_IO,
            "quay/hubimage:1",
            namespace="docker.io",
        ),
        id="ns=docker.io keeps a Hub name that starts like an alias",
    ),
]


@pytest.mark.parametrize("case", ROUTE_PARAMS)
def test_each_route_reaches_its_upstream(
    fleet: Fleet, sentinel: Sentinel, case: RouteCase
) -> None:
    """Challenge, token and manifest all come from the upstream the route names."""
    docxy = fleet.docxy
    image = fleet.image(case.registry, case.ref)
    path = case.path.format(port=docxy.port)
    headers = {"Accept": MANIFEST_ACCEPT}
    if case.host is not None:
        headers["Host"] = case.host.format(port=docxy.port)
    since = fleet.mark()

    first = request(docxy, path, headers=headers)

    params = challenge(first)
    # The challenge is the routed upstream's (its service), re-issued with
    # that upstream's realm at Docxy's public URL.
    assert params["realm"] == docxy.url + REALM_PATHS[case.registry], params
    assert params["service"] == SERVICES[case.registry], params
    assert first.header("OCI-Namespace") == case.namespace, first.headers
    token = token_from(params["realm"], params)
    resp = request(docxy, path, headers={**headers, "Authorization": f"Bearer {token}"})
    assert resp.status == 200, (resp.status, resp.body)
    assert sha256_digest(resp.body) == image.digest
    assert resp.header("Docker-Content-Digest") == image.digest
    assert resp.header("OCI-Namespace") == case.namespace, resp.headers
    new = fleet.new_requests(since)
    assert (
        "GET",
        f"/v2/{image.repo}/manifests/{image.tag}",
    ) in new[case.registry], new
    for name, seen in new.items():
        if name != case.registry:
            assert mentions(seen, image.repo) == [], (name, seen)
        assert all("ns=" not in p for _m, p in seen), seen


@pytest.mark.parametrize(
    ("path", "host", "registry"),
    [
        ("/v2/", None, DOCKER_IO),
        ("/v2/", "localhost:{port}", QUAY),
        ("/ghcr/v2/", None, GHCR),
        ("/quay/v2/", "localhost", QUAY),
        ("/docker.io/v2/", "localhost", DOCKER_IO),
    ],
)
def test_base_answers_the_challenge_of_its_upstream(
    fleet: Fleet, sentinel: Sentinel, path: str, host: str | None, registry: str
) -> None:
    """``/v2/`` (podman and dockerd ping it) names the routed upstream's realm."""
    docxy = fleet.docxy
    headers = {"Host": host.format(port=docxy.port)} if host else {}
    params = challenge(request(docxy, path, headers=headers))
    assert params["realm"] == docxy.url + PING_REALM_PATHS[registry], params
    assert params["service"] == SERVICES[registry], params


def test_token_request_routes_by_alias_in_scope(
    fleet: Fleet, sentinel: Sentinel
) -> None:
    """podman asks the default realm for ``repository:ghcr/owner/ghtool:pull``.

    Docxy sends it to ghcr's token service with the alias removed and ghcr's
    service name, and the token works for the ghcr manifest.
    """
    docxy = fleet.docxy
    image = fleet.image(GHCR, "owner/ghtool:1")
    since = fleet.mark()
    query = urlencode(
        [
            ("scope", "repository:ghcr/owner/ghtool:pull"),
            ("service", SERVICES[DOCKER_IO]),
        ]
    )
    resp = request(docxy, f"/auth/token?{query}")
    assert resp.status == 200, resp.body
    token = resp.json()["token"]
    tokens = fleet.new_tokens(since)
    assert [e["params"] for e in tokens[GHCR]] == [
        [["scope", "repository:owner/ghtool:pull"], ["service", SERVICES[GHCR]]]
    ], tokens
    assert tokens[DOCKER_IO] == [] and tokens[QUAY] == [], tokens
    got = request(
        docxy,
        "/v2/ghcr/owner/ghtool/manifests/1",
        headers={"Accept": MANIFEST_ACCEPT, "Authorization": f"Bearer {token}"},
    )
    assert got.status == 200, got.body
    assert sha256_digest(got.body) == image.digest


def test_one_token_request_cannot_span_registries(
    fleet: Fleet, sentinel: Sentinel
) -> None:
    docxy = fleet.docxy
    since = fleet.mark()
    query = urlencode(
        [
            ("scope", "repository:ghcr/owner/ghtool:pull"),
            ("scope", "repository:quay/org/quayapp:pull"),
        ]
    )
    resp = request(docxy, f"/auth/token?{query}")
    assert resp.status == 400, resp.body
    assert_envelope(resp, code="DENIED")
    assert all(v == [] for v in fleet.new_tokens(since).values())


# --------------------------------------------------------------------------
# containerd: hosts.toml for three registries, one Docxy
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def containerd(
    fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd]:
    def start(base: Path) -> Containerd:
        daemon = Containerd(base)
        for registry in (DOCKER_IO, GHCR, QUAY):
            daemon.set_mirror(fleet.docxy.url, registry)
        return daemon

    yield from running(tmp_path_factory, "rt-containerd", (CONTAINERD, CTR), start)


@pytest.mark.parametrize(
    ("registry", "ref"),
    [
        (DOCKER_IO, "library/alpine:3.20"),
        (GHCR, "owner/ghtool:1"),
        (QUAY, "org/quayapp:2"),
        (DOCKER_IO, "quay/hubimage:1"),
    ],
)
def test_containerd_pulls_each_registry_from_its_upstream(
    containerd: Containerd,
    fleet: Fleet,
    sentinel: Sentinel,
    registry: str,
    ref: str,
) -> None:
    """Every request carries ``?ns=<registry>``; Docxy routes it by that alone."""
    image = fleet.image(registry, ref)
    full_ref = f"{registry}/{ref}"
    namespace = registry.replace(".", "-")
    log = AccessLog(fleet.docxy)
    since = fleet.mark()

    result = containerd.pull(namespace, full_ref)

    assert containerd.image_digest(namespace, full_ref) == image.digest
    sent = request_urls(result.stdout + result.stderr)
    assert sent, result.stderr
    for _method, url in sent:
        parts = urlsplit(url)
        assert parts.netloc == fleet.docxy.hostport, url
        assert parts.path.startswith(f"/v2/{image.repo}/"), url
        assert ("ns", registry) in parse_qsl(parts.query), url
    # ... and every answer, 401s included, named the registry it came from.
    answers = response_headers(result.stdout + result.stderr, "OCI-Namespace")
    assert answers, result.stderr
    assert all(value == registry for _url, value in answers), answers
    assert_pulled_from(fleet, since, registry, image)
    # Tokens came from the routed upstream's realm at Docxy.
    realms = {e.bare_path for e in log.entries() if e.bare_path.startswith("/auth/")}
    assert realms == {REALM_PATHS[registry]}, log.dump()


def test_containerd_host_url_with_alias_path(
    containerd: Containerd,
    fleet: Fleet,
    sentinel: Sentinel,
    tmp_path: Path,
) -> None:
    """``[host."http://docxy/ghcr"]``: containerd sends ``/ghcr/v2/...?ns=ghcr.io``."""
    image = fleet.image(GHCR, "owner/ghpath:1")
    hosts_dir = tmp_path / "certs.d"
    containerd.set_mirror(f"{fleet.docxy.url}/ghcr", GHCR, hosts_dir=hosts_dir)
    log = AccessLog(fleet.docxy)
    since = fleet.mark()

    result = containerd.pull("ghcr-path", f"{GHCR}/owner/ghpath:1", hosts_dir=hosts_dir)

    assert containerd.image_digest("ghcr-path", f"{GHCR}/owner/ghpath:1") == (
        image.digest
    )
    sent = request_urls(result.stdout + result.stderr)
    assert sent, result.stderr
    for _method, url in sent:
        assert urlsplit(url).path.startswith("/ghcr/v2/owner/ghpath/"), url
    served = [e for e in log.entries() if e.bare_path.startswith("/ghcr/v2/")]
    assert served and all(e.status in (200, 401) for e in served), log.dump()
    assert_pulled_from(fleet, since, GHCR, image)


def test_ns_answer_carries_oci_namespace(fleet: Fleet, sentinel: Sentinel) -> None:
    """OCI distribution spec, "Registry Proxying": the HEAD containerd sends
    first is answered with ``OCI-Namespace`` (and the routed upstream's
    challenge); requests without ``ns`` get no such header."""
    docxy = fleet.docxy
    for registry, ref in (
        (DOCKER_IO, "library/alpine:3.20"),
        (GHCR, "owner/ghtool:1"),
        (QUAY, "org/quayapp:2"),
    ):
        repo, tag = ref.split(":")
        path = f"/v2/{repo}/manifests/{tag}?ns={registry}"
        first = request(docxy, path, method="HEAD", headers={"Accept": MANIFEST_ACCEPT})
        assert first.header("OCI-Namespace") == registry, first.headers
        params = challenge(first)
        assert params["service"] == SERVICES[registry], params
        token = token_from(params["realm"], params)
        head = request(
            docxy,
            path,
            method="HEAD",
            headers={"Accept": MANIFEST_ACCEPT, "Authorization": f"Bearer {token}"},
        )
        assert head.status == 200, head.headers
        assert head.header("OCI-Namespace") == registry, head.headers
        assert head.header("Docker-Content-Digest") == fleet.image(registry, ref).digest
    plain = request(docxy, "/v2/library/alpine/manifests/3.20", method="HEAD")
    assert plain.status == 401
    assert plain.header("OCI-Namespace") is None, plain.headers


# --------------------------------------------------------------------------
# podman: registries.conf mirrors with a path prefix
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    hostport = fleet.docxy.hostport

    def start(base: Path) -> Podman:
        client = Podman(base, hostport)
        client.set_mirrors(
            {
                DOCKER_IO: [hostport],
                GHCR: [f"{hostport}/ghcr"],
                QUAY: [f"{hostport}/quay"],
            }
        )
        return client

    yield from running(tmp_path_factory, "rt-podman", (PODMAN,), start)


@pytest.mark.parametrize(
    ("registry", "ref", "alias"),
    [(GHCR, "owner/ghtool:1", "ghcr"), (QUAY, "org/quayapp:2", "quay")],
)
def test_podman_path_prefix_mirror(
    podman: Podman,
    fleet: Fleet,
    sentinel: Sentinel,
    registry: str,
    ref: str,
    alias: str,
) -> None:
    """podman pings ``/v2/``, asks the *default* realm for
    ``repository:<alias>/<repo>:pull`` and GETs ``/v2/<alias>/<repo>/...``;
    the alias sends the token request and the pulls to the right upstream."""
    image = fleet.image(registry, ref)
    full_ref = f"{registry}/{ref}"
    podman.remove(full_ref)
    log = AccessLog(fleet.docxy)
    since = fleet.mark()

    podman.pull(full_ref)

    info = podman.inspect(full_ref)
    assert info["Digest"] == image.digest
    entries = log.entries()
    assert any(e.bare_path == "/v2/" for e in entries), log.dump()
    assert any(e.bare_path == "/auth/token" and e.status == 200 for e in entries), (
        log.dump()
    )
    prefix = f"/v2/{alias}/{image.repo}/"
    assert any(
        e.method == "GET"
        and e.bare_path == f"{prefix}manifests/{image.tag}"
        and e.status == 200
        for e in entries
    ), log.dump()
    assert any(
        e.bare_path.startswith(f"{prefix}blobs/") and e.status == 200 for e in entries
    ), log.dump()
    # The ping of the mirror host is the default upstream's business.
    assert_pulled_from(
        fleet, since, registry, image, allowed_elsewhere=[("GET", "/v2/")]
    )
    tokens = fleet.new_tokens(since)
    assert f"repository:{alias}/{image.repo}:pull" not in scopes_of(tokens[registry])


# --------------------------------------------------------------------------
# skopeo: routing by Host (localhost -> quay.io, 127.0.0.1 -> default)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "registry"), [("localhost", QUAY), (LOOPBACK, DOCKER_IO)]
)
def test_skopeo_routes_by_host(
    fleet: Fleet,
    sentinel: Sentinel,
    tmp_path: Path,
    host: str,
    registry: str,
) -> None:
    """The same reference through two host names gets two different images:
    quay.io's for ``localhost`` (a configured host), the default upstream's
    decoy for ``127.0.0.1`` (no host configured)."""
    image = fleet.image(registry, "org/quayapp:2")
    other = fleet.image(QUAY if registry == DOCKER_IO else DOCKER_IO, "org/quayapp:2")
    assert image.digest != other.digest
    out = tmp_path / "out"
    log = AccessLog(fleet.docxy)
    since = fleet.mark()

    skopeo_pull(f"{host}:{fleet.docxy.port}", "org/quayapp:2", out, "--quiet")

    assert_pulled(out, [], manifest=image.digest)
    assert_pulled_from(fleet, since, registry, image)
    # skopeo takes the realm of its /v2/ ping.
    realms = {e.bare_path for e in log.entries() if e.bare_path.startswith("/auth/")}
    assert realms == {PING_REALM_PATHS[registry]}, log.dump()


# --------------------------------------------------------------------------
# dockerd: registry-mirrors still serves Docker Hub images
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerd(
    fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dockerd]:
    yield from running(
        tmp_path_factory,
        "rt-dockerd",
        (DOCKERD, DOCKER_CLI),
        lambda base: Dockerd(base, [fleet.docxy.url]),
    )


def test_dockerd_registry_mirror_pulls_docker_hub_images(
    dockerd: Dockerd, fleet: Fleet, sentinel: Sentinel
) -> None:
    image = fleet.image(DOCKER_IO, "library/alpine:3.20")
    dockerd.remove("library/alpine:3.20")
    since = fleet.mark()

    dockerd.pull("library/alpine:3.20")

    info = dockerd.inspect("library/alpine:3.20")
    assert {f"alpine@{image.digest}", f"library/alpine@{image.digest}"} & set(
        info["RepoDigests"]
    ), info["RepoDigests"]
    assert_pulled_from(fleet, since, DOCKER_IO, image)


# --------------------------------------------------------------------------
# Security: nothing a client sends makes Docxy contact an unconfigured host
# --------------------------------------------------------------------------


def assert_no_upstream_contact(fleet: Fleet, since: Mark) -> None:
    """No upstream registry or token service saw anything after ``since``."""
    assert all(v == [] for v in fleet.new_requests(since).values()), fleet.new_requests(
        since
    )
    assert all(v == [] for v in fleet.new_tokens(since).values()), fleet.new_tokens(
        since
    )


UNKNOWN_REGISTRY = [
    ("GET", "/v2/x/manifests/1?ns=evil.example", 404, "NAME_UNKNOWN"),
    ("HEAD", "/v2/x/manifests/1?ns=evil.example", 404, None),
    ("GET", "/v2/x/blobs/sha256:{hex}?ns=evil.example", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/?ns=evil.example", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/x/manifests/1?ns={sentinel}", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/x/manifests/1?ns=%5B127.0.0.1%5D:{sport}", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/x/manifests/1?ns=evil.example&ns=ghcr.io", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/x/manifests/1?%6es=evil.example", 404, "NAME_UNKNOWN"),
    ("GET", "/ghcr/v2/x/manifests/1?ns=evil.example", 404, "NAME_UNKNOWN"),
    ("GET", "/evil/v2/x/manifests/1", 404, "NOT_FOUND"),
    ("GET", "/evil.example/v2/x/manifests/1", 404, "NOT_FOUND"),
    ("GET", "/{sentinel}/v2/x/manifests/1", 404, "NOT_FOUND"),
    ("GET", "//{sentinel}/v2/x/manifests/1", 404, "NOT_FOUND"),
    ("GET", "/v2/{sentinel}/x/manifests/1", 400, "NAME_INVALID"),
    ("GET", "/v2/evil.example:443/x/manifests/1", 400, "NAME_INVALID"),
]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    UNKNOWN_REGISTRY,
    ids=[f"{m} {p}" for m, p, _s, _c in UNKNOWN_REGISTRY],
)
def test_unconfigured_registry_is_a_clear_error(
    fleet: Fleet,
    sentinel: Sentinel,
    method: str,
    path: str,
    status: int,
    code: str | None,
) -> None:
    """``ns`` or a path naming an unconfigured registry: an error, no fetch."""
    docxy = fleet.docxy
    path = path.format(sentinel=sentinel.hostport, sport=sentinel.port, hex="0" * 64)
    log = AccessLog(docxy)
    since = fleet.mark()

    resp = request(docxy, path, method=method)

    assert resp.status == status, (resp.status, resp.body)
    if code is not None:
        assert_envelope(resp, code=code)
    entries = log.entries()
    assert entries and all(e.upstream_status == "-" for e in entries), log.dump()
    assert "upstream_error" not in log.dump()
    assert_no_upstream_contact(fleet, since)


@pytest.mark.parametrize(
    "path",
    ["/v2/evil.example/x/manifests/1", "/v2/evil/x/manifests/1"],
)
def test_unknown_alias_is_only_a_name_on_the_default_upstream(
    fleet: Fleet, sentinel: Sentinel, path: str
) -> None:
    """A first component that is no configured alias is part of the name.

    It goes to the default upstream as a repository name (where it does not
    exist: the default's normal 401 answer), never to a host of that name,
    and never to another configured upstream.
    """
    docxy = fleet.docxy
    log = AccessLog(docxy)
    since = fleet.mark()

    params = challenge(request(docxy, path, headers={"Accept": MANIFEST_ACCEPT}))

    assert params["realm"] == docxy.url + REALM_PATHS[DOCKER_IO], params
    assert params["service"] == SERVICES[DOCKER_IO], params
    assert "upstream_error" not in log.dump()
    new = fleet.new_requests(since)
    assert paths_of(new[DOCKER_IO]) == [path], new
    assert new[GHCR] == [] and new[QUAY] == [], new


def test_alias_without_a_dot_shadows_the_hub_namespace(
    fleet: Fleet, sentinel: Sentinel
) -> None:
    """Documented trade-off (docs/routing.md): without ``ns``, ``quay/...``
    is the quay alias, so Docker Hub's ``quay/hubimage`` is asked of quay.io
    (where it does not exist). containerd is not affected: its ``ns`` wins."""
    since = fleet.mark()
    params = challenge(request(fleet.docxy, "/v2/quay/hubimage/manifests/1"))
    assert params["service"] == SERVICES[QUAY], params
    new = fleet.new_requests(since)
    assert paths_of(new[QUAY]) == ["/v2/hubimage/manifests/1"], new
    assert new[DOCKER_IO] == [], new


TRAVERSAL = [
    ("/v2/../x/manifests/1", "NAME_INVALID"),
    ("/v2/ghcr/../quay/org/quayapp/manifests/2", "NAME_INVALID"),
    ("/v2/ghcr/%2e%2e/quay/org/quayapp/manifests/2", "NAME_INVALID"),
    ("/v2/%2e%2e/x/manifests/1", "NAME_INVALID"),
    ("/v2/ghcr%2Fowner/ghtool/manifests/1", "NAME_INVALID"),
    ("/v2/ghcr%2F..%2Fquay/org/quayapp/manifests/2", "NAME_INVALID"),
    ("/v2/owner%2fghtool/manifests/1?ns=ghcr.io", "NAME_INVALID"),
    ("/ghcr/v2/../../quay/v2/org/quayapp/manifests/2", "NAME_INVALID"),
    ("/ghcr/v2/owner/..%2F..%2Fx/manifests/1", "NAME_INVALID"),
    ("/v2/quay/org/quayapp/manifests/..%2F..%2F2", "TAG_INVALID"),
    ("/v2/quay/org/quayapp/manifests/..", "TAG_INVALID"),
    ("/v2/quay/org/quayapp/blobs/sha256:..%2F..%2Fx", "DIGEST_INVALID"),
]


@pytest.mark.parametrize(("path", "code"), TRAVERSAL, ids=[p for p, _c in TRAVERSAL])
def test_path_traversal_is_refused_before_routing_upstream(
    fleet: Fleet, sentinel: Sentinel, path: str, code: str
) -> None:
    """Names are validated after the alias is stripped; nothing is forwarded."""
    docxy = fleet.docxy
    log = AccessLog(docxy)
    since = fleet.mark()

    resp = request(docxy, path)

    assert resp.status == 400, (resp.status, resp.body)
    assert_envelope(resp, code=code)
    assert all(e.upstream_status == "-" for e in log.entries()), log.dump()
    assert_no_upstream_contact(fleet, since)


HOST_INJECTION = [
    {"Host": "{sentinel}"},
    {"Host": "evil.example"},
    {"Host": "evil.example:{sport}"},
    {"Host": "localhost@{sentinel}"},
    {
        "Host": "127.0.0.1:{port}",
        "X-Forwarded-Host": "{sentinel}",
        "X-Forwarded-Proto": "https",
        "Forwarded": "host={sentinel};proto=http",
    },
]


@pytest.mark.parametrize(
    "injected", HOST_INJECTION, ids=[" ".join(h.values()) for h in HOST_INJECTION]
)
@pytest.mark.parametrize(
    "path", ["/v2/", "/v2/library/alpine/manifests/3.20", "/v2/alpine/manifests/3.20"]
)
def test_host_header_injection_gets_the_default_upstream(
    fleet: Fleet, sentinel: Sentinel, injected: dict[str, str], path: str
) -> None:
    """A Host that matches no configured host only means "the default": its
    normal answer, with Docxy's configured realm, never the injected host."""
    docxy = fleet.docxy
    headers = {
        k: v.format(sentinel=sentinel.hostport, sport=sentinel.port, port=docxy.port)
        for k, v in injected.items()
    }
    since = fleet.mark()

    first = request(docxy, path, headers={**headers, "Accept": MANIFEST_ACCEPT})

    params = challenge(first)
    realms = PING_REALM_PATHS if path == "/v2/" else REALM_PATHS
    assert params["realm"] == docxy.url + realms[DOCKER_IO], params
    assert params["service"] == SERVICES[DOCKER_IO], params
    for needle in (sentinel.hostport, "evil.example"):
        assert needle not in (first.header("WWW-Authenticate") or ""), first.headers
    if path != "/v2/":
        token = token_from(params["realm"], params)
        resp = request(
            docxy,
            path,
            headers={
                **headers,
                "Accept": MANIFEST_ACCEPT,
                "Authorization": f"Bearer {token}",
            },
        )
        assert resp.status == 200, resp.body
        assert (
            sha256_digest(resp.body)
            == fleet.image(DOCKER_IO, "library/alpine:3.20").digest
        )
    new = fleet.new_requests(since)
    assert new[GHCR] == [] and new[QUAY] == [], new


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "http://{sentinel}/v2/x/manifests/1"),
        ("GET", "http://{sentinel}/v2/"),
        ("CONNECT", "{sentinel}"),
        ("GET", "http://evil.example/v2/library/alpine/manifests/3.20"),
    ],
)
def test_docxy_is_not_a_forward_proxy(
    fleet: Fleet, sentinel: Sentinel, method: str, target: str
) -> None:
    """Absolute-form request targets and CONNECT are not followed anywhere."""
    docxy = fleet.docxy
    target = target.format(sentinel=sentinel.hostport)
    since = fleet.mark()

    host = urlsplit(target).netloc if "://" in target else target
    resp = raw_request(docxy, method, target, host=host)

    assert resp.status in (400, 404, 405), (resp.status, resp.body)
    assert_no_upstream_contact(fleet, since)


def test_token_request_cannot_name_another_realm(
    fleet: Fleet, sentinel: Sentinel
) -> None:
    """``realm``/``service`` in a token request choose nothing: the default
    upstream's token service is asked, with its own service name."""
    docxy = fleet.docxy
    since = fleet.mark()
    query = urlencode(
        [
            ("realm", f"http://{sentinel.hostport}/token"),
            ("service", sentinel.hostport),
            ("scope", "repository:library/alpine:pull"),
        ]
    )

    resp = request(docxy, f"/auth/token?{query}", headers={"Host": sentinel.hostport})

    assert resp.status == 200, resp.body
    tokens = fleet.new_tokens(since)
    assert len(tokens[DOCKER_IO]) == 1, tokens
    assert ["service", SERVICES[DOCKER_IO]] in tokens[DOCKER_IO][0]["params"]
    assert tokens[GHCR] == [] and tokens[QUAY] == [], tokens


# --------------------------------------------------------------------------
# Edges: inner paths, echoed namespaces, malformed ns, scope names
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/auth/evil.example/token",
        "/auth/",
        "/auth/{sentinel}/token",
        "/auth/ghcr.io/",
        "/ghcr/",
        "/ghcr/evil",
    ],
)
def test_unknown_inner_path_is_an_envelope_404(
    fleet: Fleet, sentinel: Sentinel, path: str
) -> None:
    docxy = fleet.docxy
    since = fleet.mark()
    resp = request(docxy, path.format(sentinel=sentinel.hostport))
    assert_no_upstream_contact(fleet, since)
    assert resp.status == 404, resp.body
    assert_envelope(resp, code="NOT_FOUND")


INJECTED_NS = "%5Bghcr.io%5D%0D%0AX-Injected:%20yes"


def test_ns_cannot_inject_response_headers(fleet: Fleet, sentinel: Sentinel) -> None:
    """CR LF in ``ns`` never becomes a header of its own."""
    resp = request(fleet.docxy, f"/v2/owner/ghtool/manifests/1?ns={INJECTED_NS}")
    assert resp.header("X-Injected") is None, resp.headers
    for name, value in resp.headers:
        assert "\r" not in value and "\n" not in value, (name, value)


@pytest.mark.parametrize("ns", ["GHCR.IO.", "ghcr.io:443"])
def test_oci_namespace_is_the_resolved_namespace(
    fleet: Fleet, sentinel: Sentinel, ns: str
) -> None:
    resp = request(fleet.docxy, f"/v2/owner/ghtool/manifests/1?ns={ns}", "HEAD")
    assert resp.status == 401, resp.headers
    assert resp.header("OCI-Namespace") == GHCR, resp.headers


def test_ns_with_junk_after_brackets_is_unknown(
    fleet: Fleet, sentinel: Sentinel
) -> None:
    since = fleet.mark()
    resp = request(fleet.docxy, f"/v2/owner/ghtool/manifests/1?ns={INJECTED_NS}")
    assert_no_upstream_contact(fleet, since)
    assert resp.status == 404, (resp.status, resp.headers)
    assert_envelope(resp, code="NAME_UNKNOWN")


def test_token_scope_names_are_validated(fleet: Fleet, sentinel: Sentinel) -> None:
    since = fleet.mark()
    query = urlencode([("scope", "repository:ghcr/../quay/org/quayapp:pull")])
    resp = request(fleet.docxy, f"/auth/token?{query}")
    tokens = fleet.new_tokens(since)
    assert all(v == [] for v in tokens.values()), tokens
    assert resp.status == 400, resp.body
