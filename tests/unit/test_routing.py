"""Routing between upstreams: ns, path aliases, Host, default; token scopes."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from docxy.config import build_config
from docxy.errors import RegistryError
from docxy.names import Kind
from docxy.routing import Mirror, Router, Target
from docxy.upstream_set import UpstreamSet, normalize_host

SETTINGS: dict[str, Any] = {
    "public-url": "https://mirror.example",
    "preset": ["ghcr.io", "quay.io"],
    "upstreams": {
        "docker.io": {"url": "http://127.0.0.1:1", "hosts": ["hub.mirror.example"]},
        "ghcr.io": {
            "url": "http://127.0.0.1:2",
            "aliases": ["ghcr", "ghcr.io"],
            "hosts": ["ghcr.mirror.example"],
        },
        "quay.io": {"url": "http://127.0.0.1:3", "aliases": ["quay", "quay.io"]},
        "internal": {"url": "https://registry.internal", "aliases": ["team/int"]},
    },
}


@pytest.fixture
def router() -> Router:
    config = build_config(SETTINGS)
    mirrors = {
        u.name: Mirror(
            u,
            config.token_realm(u),
            config.ping_realm(u),
            None,  # type: ignore[arg-type]
        )
        for u in config.upstreams
    }
    return Router(UpstreamSet(config.upstreams, config.default), mirrors)


def request(path: str, host: str = "mirror.example") -> Request:
    uri = path.encode()
    req = DummyRequest(uri.partition(b"?")[0].split(b"/")[1:])
    req.uri = uri
    req.path = uri.partition(b"?")[0]  # type: ignore[attr-defined]
    req.requestHeaders.setRawHeaders(b"host", [host.encode()])
    return cast(Request, req)


def route(router: Router, path: str, host: str = "mirror.example") -> Target:
    req = request(path, host)
    return router.route(req, req.path.split(b"/")[2:])


def where(target: Target) -> tuple[str, str, str, str | None]:
    return (
        target.mirror.upstream.name,
        target.route.name,
        target.prefix,
        target.namespace,
    )


def test_default_upstream(router: Router) -> None:
    assert where(route(router, "/v2/alpine/manifests/1")) == (
        "docker.io",
        "alpine",
        "",
        None,
    )
    assert route(router, "/v2/alpine/manifests/1").upstream_path == (
        "/v2/library/alpine/manifests/1"
    )


def test_ns_routes_first(router: Router) -> None:
    target = route(router, "/v2/owner/img/manifests/v1?ns=ghcr.io")
    assert where(target) == ("ghcr.io", "owner/img", "", "ghcr.io")
    assert target.upstream_path == "/v2/owner/img/manifests/v1"
    assert (
        where(
            route(
                router, "/v2/library/x/blobs/" + "sha256:" + "a" * 64 + "?ns=docker.io"
            )
        )[0]
        == "docker.io"
    )


def test_ns_with_the_registry_also_in_the_path(router: Router) -> None:
    target = route(router, "/v2/ghcr.io/owner/img/manifests/v1?ns=ghcr.io")
    assert where(target) == ("ghcr.io", "owner/img", "ghcr.io", "ghcr.io")


@pytest.mark.parametrize("ns", ["evil.example", "127.0.0.1:9", ""])
def test_unknown_ns_is_an_error_never_a_fetch(router: Router, ns: str) -> None:
    with pytest.raises(RegistryError) as info:
        route(router, f"/v2/owner/img/manifests/v1?ns={ns}")
    assert (info.value.status, info.value.code) == (404, "NAME_UNKNOWN")


def test_path_alias(router: Router) -> None:
    assert where(route(router, "/v2/ghcr/owner/img/manifests/v1")) == (
        "ghcr.io",
        "owner/img",
        "ghcr",
        None,
    )
    assert where(route(router, "/v2/quay.io/org/app/tags/list"))[:2] == (
        "quay.io",
        "org/app",
    )
    # Multi-component aliases, longest first.
    assert where(route(router, "/v2/team/int/app/manifests/1"))[:3] == (
        "internal",
        "app",
        "team/int",
    )


def test_unknown_alias_is_just_a_name_on_the_default(router: Router) -> None:
    assert where(route(router, "/v2/evil.example/x/manifests/1"))[:2] == (
        "docker.io",
        "evil.example/x",
    )


@pytest.mark.parametrize(
    "host", ["ghcr.mirror.example", "GHCR.Mirror.Example.", "ghcr.mirror.example:443"]
)
def test_host_routing_is_normalised(router: Router, host: str) -> None:
    assert where(route(router, "/v2/owner/img/manifests/1", host))[0] == "ghcr.io"


def test_unknown_host_goes_to_default(router: Router) -> None:
    assert where(route(router, "/v2/x/manifests/1", "evil.example"))[0] == "docker.io"


def test_base_path_follows_host(router: Router) -> None:
    target = route(router, "/v2/", "ghcr.mirror.example")
    assert target.route.kind is Kind.BASE
    assert target.mirror.upstream.name == "ghcr.io"


def test_challenge_scope_back_into_client_naming(router: Router) -> None:
    target = route(router, "/v2/ghcr/owner/img/manifests/v1")
    assert target.scope_to_client("repository:owner/img:pull") == (
        "repository:ghcr/owner/img:pull"
    )
    assert target.scope_to_client("repository:other/x:pull") == (
        "repository:other/x:pull"
    )
    hub = route(router, "/v2/docker.io/alpine/manifests/1")
    assert hub.scope_to_client("repository:library/alpine:pull") == (
        "repository:docker.io/alpine:pull"
    )


def test_mirror_wide_realm_follows_aliases(router: Router) -> None:
    default = router.default
    mirror, scopes = router.token_scopes(
        default, ["repository:ghcr/owner/img:pull"], by_alias=True
    )
    assert (mirror.upstream.name, scopes) == ("ghcr.io", ["repository:owner/img:pull"])
    mirror, scopes = router.token_scopes(default, ["repository:alpine:pull"], True)
    assert (mirror, scopes) == (default, ["repository:alpine:pull"])
    with pytest.raises(RegistryError):
        router.token_scopes(
            default, ["repository:ghcr/a/b:pull", "repository:quay/c/d:pull"], True
        )


def test_upstream_realm_strips_only_its_own_aliases(router: Router) -> None:
    """containerd pulling docker.io/quay/x (ns=docker.io) must stay on Docker Hub."""
    default, ghcr = router.default, router.mirrors["ghcr.io"]
    assert router.token_scopes(default, ["repository:quay/x:pull"]) == (
        default,
        ["repository:quay/x:pull"],
    )
    assert router.token_scopes(ghcr, ["repository:ghcr/owner/img:pull"]) == (
        ghcr,
        ["repository:owner/img:pull"],
    )


def test_token_scope_names_are_checked(router: Router) -> None:
    with pytest.raises(RegistryError):
        router.token_scopes(router.default, ["repository:ghcr/../quay/x:pull"], True)


def test_realms(router: Router) -> None:
    assert router.default.ping_realm == "https://mirror.example/auth/token"
    assert router.default.public_realm == "https://mirror.example/auth/docker.io/token"
    ghcr = router.mirrors["ghcr.io"]
    assert (
        ghcr.public_realm
        == ghcr.ping_realm
        == ("https://mirror.example/auth/ghcr.io/token")
    )


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("A.Example.", "a.example"), ("a.example:5000", "a.example"), ("[::1]:5", "::1")],
)
def test_normalize_host(raw: str, normal: str) -> None:
    assert normalize_host(raw) == normal
