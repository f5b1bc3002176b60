"""Route parsing and validation of names, tags and digests."""

from __future__ import annotations

import pytest

from docxy.errors import RegistryError
from docxy.names import Kind, Route, is_valid_digest, parse_v2_path, upstream_name

SHA = "sha256:" + "a" * 64


def parse(path: str) -> Route:
    segments = [s.encode() for s in path.split("/")] if path else []
    return parse_v2_path(segments, "/v2/" + path)


def error_of(path: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse(path)
    return info.value


@pytest.mark.parametrize("path", ["", "/"[1:]])
def test_base(path: str) -> None:
    assert parse(path).kind is Kind.BASE
    assert parse_v2_path([b""], "/v2/").kind is Kind.BASE


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("alpine/manifests/3.20", Route(Kind.MANIFESTS, "alpine", "3.20")),
        ("a/b/c/d/manifests/v1", Route(Kind.MANIFESTS, "a/b/c/d", "v1")),
        (f"user/repo/manifests/{SHA}", Route(Kind.MANIFESTS, "user/repo", SHA)),
        (f"library/x/blobs/{SHA}", Route(Kind.BLOBS, "library/x", SHA)),
        ("my.org/some-repo_1/tags/list", Route(Kind.TAGS, "my.org/some-repo_1")),
        (f"x/referrers/{SHA}", Route(Kind.REFERRERS, "x", SHA)),
        # A repository may itself be called "manifests" or "tags".
        ("manifests/manifests/latest", Route(Kind.MANIFESTS, "manifests", "latest")),
        ("tags/tags/list", Route(Kind.TAGS, "tags")),
    ],
)
def test_routes(path: str, route: Route) -> None:
    assert parse(path) == route


@pytest.mark.parametrize(
    "path",
    [
        "alpine",
        "alpine/manifests",
        "alpine/uploads/x",
        "alpine/manifests/",
        "alpine/tags/list/",
        "alpine/blobs/uploads/",
        "_catalog",
    ],
)
def test_unknown_paths_are_404(path: str) -> None:
    assert error_of(path).status == 404


@pytest.mark.parametrize(
    "name",
    [
        "UPPER",
        "a/../b",
        "..",
        "a//b",
        "a%2Fb",
        "-a",
        "a-",
        "a__",
        "a/./b",
        "ä",
        "a" * 256,
    ],
)
def test_invalid_names(name: str) -> None:
    error = error_of(f"{name}/manifests/latest")
    assert (error.status, error.code) == (400, "NAME_INVALID")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "md5:" + "a" * 32,
        "sha512:" + "a" * 64,
        "sha256",
        "latest",
    ],
)
def test_invalid_blob_digests(digest: str) -> None:
    error = error_of(f"alpine/blobs/{digest}")
    assert (error.status, error.code) == (400, "DIGEST_INVALID")


def test_manifest_reference_with_colon_is_a_digest() -> None:
    assert error_of("alpine/manifests/sha256:abc").code == "DIGEST_INVALID"


@pytest.mark.parametrize("tag", ["-x", "a" * 129, ".x", "a+b"])
def test_invalid_tags(tag: str) -> None:
    assert error_of(f"alpine/manifests/{tag}").code == "TAG_INVALID"


def test_sha512_is_accepted() -> None:
    assert is_valid_digest("sha512:" + "0" * 128)


def test_library_prefix_only_for_one_component_names() -> None:
    assert upstream_name("alpine", True) == "library/alpine"
    assert upstream_name("library/alpine", True) == "library/alpine"
    assert upstream_name("user/repo", True) == "user/repo"
    assert upstream_name("alpine", False) == "alpine"


def test_upstream_paths() -> None:
    assert Route(Kind.BASE).upstream_path(True) == "/v2/"
    assert (
        parse("alpine/tags/list").upstream_path(True) == "/v2/library/alpine/tags/list"
    )
    assert (
        parse(f"alpine/blobs/{SHA}").upstream_path(False) == f"/v2/alpine/blobs/{SHA}"
    )
