"""Token requests: malformed scopes are answered 400 by Docxy and never reach a
realm; the scopes real clients send keep being forwarded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import bcrypt
import pytest
import pytest_twisted
from twisted.web.server import Request

from docxy.oci import MAX_TOKEN_SCOPES

from .harness import FakeUpstream, Harness, error_of, start

LOGIN = {b"authorization": [b"Basic Ym9iOnB3"]}  # the client's own: forwarded


def realm_of(upstream: FakeUpstream) -> FakeUpstream:
    def challenge(request: Request) -> bytes:
        request.setResponseCode(401)
        realm = f'Bearer realm="{upstream.url}/token",service="svc"'
        request.setHeader(b"www-authenticate", realm.encode())
        return b'{"errors":[{"code":"UNAUTHORIZED"}]}'

    def token(request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"token": "t0k", "expires_in": 300}'

    upstream.routes[b"/v2/"] = challenge
    upstream.routes[b"/token"] = token
    return upstream


@pytest.fixture
def upstream() -> FakeUpstream:
    return realm_of(FakeUpstream())


@pytest_twisted.async_yield_fixture
async def docxy(upstream: FakeUpstream) -> AsyncIterator[Harness]:
    harness = await start(upstream)
    yield harness
    await harness.stop()


def asked_realm(upstream: FakeUpstream) -> list[list[tuple[str, str]]]:
    """The parameters of every request that reached the upstream's realm."""
    return [
        parse_qsl(
            urlsplit(seen.uri.decode()).query or seen.body.decode(),
            keep_blank_values=True,
        )
        for seen in upstream.seen
        if seen.uri.startswith(b"/token")
    ]


def query(*scopes: str) -> str:
    return "&".join(["service=svc", *(f"scope={quote(s)}" for s in scopes)])


UNSUPPORTED = [
    "bogus",  # on main: forwarded to the upstream's realm as it was
    "repository:alpine",
    "repository:alpine:",  # no action
    "repository:alpine:pull,,push",
    "repository:alpine:PULL",
    "foo:bar:pull",  # a resource type no registry has
    "registry:other:*",
    "Repository:alpine:pull",
    "repository)(:alpine:pull",
    "repository:" + "a" * 600 + ":pull",  # over-long
]
NAME_INVALID = [
    "repository:Alpine:pull",
    "repository:a/../b:pull",
    "repository:localhost:5000/x:pull",  # a host is no part of a mirror's names
    "repository:" + "a" * 300 + ":pull",
    "repository::pull",
]


@pytest.mark.parametrize("scope", UNSUPPORTED + NAME_INVALID)
@pytest_twisted.ensureDeferred
async def test_a_malformed_scope_is_answered_400_and_never_forwarded(
    docxy: Harness, upstream: FakeUpstream, scope: str
) -> None:
    for path in ("/auth/token", "/auth/docker.io/token"):
        reply = await docxy.request(b"GET", f"{path}?{query(scope)}", LOGIN)
        assert reply.code == 400, reply.body
        code = "NAME_INVALID" if scope in NAME_INVALID else "UNSUPPORTED"
        assert error_of(reply)["code"] == code
    # One bad scope among good ones, in a space-separated list, or POSTed.
    listed = await docxy.request(
        b"GET", f"/auth/token?{query('repository:alpine:pull ' + scope)}", LOGIN
    )
    assert listed.code == 400
    form = f"grant_type=password&username=bob&password=pw&{query(scope)}"
    posted = await docxy.post_form("/auth/token", form.encode())
    assert posted.code == 400
    assert asked_realm(upstream) == []


@pytest_twisted.ensureDeferred
async def test_too_many_scopes_are_refused_at_once(
    docxy: Harness, upstream: FakeUpstream
) -> None:
    many = [f"repository:app{n}:pull" for n in range(MAX_TOKEN_SCOPES + 1)]
    reply = await docxy.request(b"GET", f"/auth/token?{query(*many)}", LOGIN)
    assert reply.code == 400
    entry = error_of(reply)
    assert entry["code"] == "UNSUPPORTED" and "at most 32" in str(entry["message"])
    in_one = await docxy.request(b"GET", f"/auth/token?{query(' '.join(many))}", LOGIN)
    assert in_one.code == 400
    assert asked_realm(upstream) == []
    fine = await docxy.request(b"GET", f"/auth/token?{query(*many[:-1])}", LOGIN)
    assert fine.code == 200


@pytest.mark.parametrize(
    ("scopes", "forwarded"),
    [
        (["repository:library/alpine:pull"], ["repository:library/alpine:pull"]),
        (["repository:alpine:pull"], ["repository:library/alpine:pull"]),
        (["repository:x/y:pull,push"], ["repository:x/y:pull,push"]),
        (["registry:catalog:*"], ["registry:catalog:*"]),
        (
            ["repository(plugin):vieux/sshfs:pull"],
            ["repository(plugin):vieux/sshfs:pull"],
        ),
        (
            ["repository:alpine:pull", "repository:x/y:pull"],
            ["repository:library/alpine:pull", "repository:x/y:pull"],
        ),
        # containerd POSTs its scopes space-separated in one parameter.
        (
            ["repository:alpine:pull repository:x/y:pull"],
            ["repository:library/alpine:pull repository:x/y:pull"],
        ),
        ([""], [""]),  # an empty scope= asks for nothing (some clients send it)
        ([], []),  # docker login
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_scopes_clients_send_are_forwarded(
    docxy: Harness, upstream: FakeUpstream, scopes: list[str], forwarded: list[str]
) -> None:
    reply = await docxy.request(b"GET", f"/auth/token?{query(*scopes)}", LOGIN)
    assert reply.code == 200, reply.body
    form = f"grant_type=password&username=bob&password=pw&{query(*scopes)}"
    posted = await docxy.post_form("/auth/token", form.encode())
    assert posted.code == 200, posted.body
    asked = asked_realm(upstream)
    assert len(asked) == 2
    for params in asked:
        assert [v for k, v in params if k == "scope"] == forwarded


@pytest_twisted.ensureDeferred
async def test_docxys_own_realm_refuses_a_malformed_scope_before_the_login(
    tmp_path: Path,
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"bob:{hashed}\n")
    upstream = realm_of(FakeUpstream())
    docxy = await start(upstream, {"htpasswd": str(htpasswd)})
    try:
        reply = await docxy.request(b"GET", f"/auth/token?{query('bogus')}", LOGIN)
        assert reply.code == 400 and error_of(reply)["code"] == "UNSUPPORTED"
        good = query("repository:alpine:pull", "registry:catalog:*")
        assert (await docxy.request(b"GET", f"/auth/token?{good}", LOGIN)).code == 200
    finally:
        await docxy.stop()
    assert asked_realm(upstream) == []
