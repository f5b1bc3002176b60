"""WWW-Authenticate parsing and rewriting; token scope translation."""

from __future__ import annotations

import pytest

from docxy.challenge import (
    find_bearer,
    parse_challenges,
    rewrite_challenge_header,
    rewrite_scope,
)

REALM = "https://mirror.example/auth/token"
HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull",error="insufficient_scope"'
)


def test_rewrite_keeps_service_scope_and_error() -> None:
    assert rewrite_challenge_header(HUB, REALM) == (
        f'Bearer realm="{REALM}",service="registry.docker.io",'
        'scope="repository:library/alpine:pull",error="insufficient_scope"'
    )


def test_rewrite_without_realm_adds_one() -> None:
    assert rewrite_challenge_header('Bearer service="s"', REALM) == (
        f'Bearer realm="{REALM}",service="s"'
    )


def test_unquoted_and_spaced_params() -> None:
    (challenge,) = parse_challenges("bearer  realm = abc , service=svc")
    assert challenge.params == [("realm", "abc"), ("service", "svc")]


def test_several_challenges_in_one_header() -> None:
    header = 'Basic realm="Registry", Bearer realm="https://a/t",service="s"'
    assert rewrite_challenge_header(header, REALM) == (
        f'Basic realm="Registry", Bearer realm="{REALM}",service="s"'
    )


def test_quoted_escapes_round_trip() -> None:
    (challenge,) = parse_challenges(r'Bearer realm="https://a/t",scope="a\"b"')
    assert challenge.get("scope") == 'a"b'
    assert r'scope="a\"b"' in challenge.render()


def test_token68_challenge_is_kept() -> None:
    assert rewrite_challenge_header("Negotiate abc==", REALM) == "Negotiate abc=="


@pytest.mark.parametrize("header", ['Bearer realm="unterminated', "Bearer realm=a b"])
def test_malformed_header_never_leaks_upstream_realm(header: str) -> None:
    assert rewrite_challenge_header(header, REALM) == f'Bearer realm="{REALM}"'


def test_find_bearer_skips_other_schemes() -> None:
    found = find_bearer(['Basic realm="x"', HUB])
    assert found is not None
    assert found.get("service") == "registry.docker.io"
    assert find_bearer(['Basic realm="x"']) is None


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("repository:alpine:pull", "repository:library/alpine:pull"),
        ("repository:library/alpine:pull", "repository:library/alpine:pull"),
        ("repository:user/repo:pull,push", "repository:user/repo:pull,push"),
        ("registry:catalog:*", "registry:catalog:*"),
        ("repository:alpine", "repository:alpine"),
        ("repository:a:b:c", "repository:a:b:c"),
        ("repository:BAD:pull", "repository:BAD:pull"),
        (
            "repository:a:pull repository:b/c:pull",
            "repository:library/a:pull repository:b/c:pull",
        ),
    ],
)
def test_rewrite_scope(scope: str, expected: str) -> None:
    assert rewrite_scope(scope, True) == expected


def test_rewrite_scope_off() -> None:
    assert rewrite_scope("repository:alpine:pull", False) == "repository:alpine:pull"
