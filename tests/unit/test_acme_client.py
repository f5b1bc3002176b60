"""The ACME client's protocol logic against a scripted CA, in memory.

treq's ``StubTreq`` serves a twisted.web Resource standing in for the CA,
and polling waits on a ``task.Clock``: a bad nonce, a problem document, a
``Retry-After`` and the poll deadline are tested without pebble and
without waiting. Issuance against the real pebble is in
tests/integration/test_acme.py.
"""

from __future__ import annotations

import json
from typing import cast

import pytest
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import Request

from docxy.tls.acme import AcmeClient, AcmeError, AcmeServerError
from docxy.tls.certs import new_key
from tests.support.acme_ca import ScriptedCA, problem
from tests.support.memory import result

CA = "https://ca.test"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


def account(request: Request) -> bytes:
    request.setResponseCode(201)
    request.setHeader(b"location", f"{CA}/acct/1".encode())
    return b"{}"


def client(ca: ScriptedCA, clock: Clock | None = None) -> AcmeClient:
    http = cast(HTTPClient, StubTreq(ca))  # StubTreq is HTTPClient's stand-in
    return AcmeClient(clock or Clock(), http, f"{CA}/dir", new_key())


def test_a_bad_nonce_is_retried_with_the_nonce_the_error_brought() -> None:
    refusals = iter([True])

    def once_bad(request: Request) -> bytes:
        if next(refusals, False):
            return problem(request, 400, BAD_NONCE, "stale")
        return account(request)

    ca = ScriptedCA(CA, {"/account": once_bad})
    acme = client(ca)
    assert result(defer.ensureDeferred(acme.register(None))) == f"{CA}/acct/1"
    assert [p["nonce"] for p in ca.protected] == ["n1", "n2"]
    assert all("jwk" in p for p in ca.protected)  # no account URL yet


def test_bad_nonces_without_end_are_an_error_after_three_tries() -> None:
    ca = ScriptedCA(CA, {"/account": lambda r: problem(r, 400, BAD_NONCE, "stale")})
    with pytest.raises(AcmeServerError) as caught:
        result(defer.ensureDeferred(client(ca).register(None)))
    assert caught.value.kind == BAD_NONCE
    assert len(ca.protected) == 3


def test_a_problem_document_becomes_a_one_line_error() -> None:
    def limited(request: Request) -> bytes:
        request.setHeader(b"retry-after", b"120")
        return problem(
            request, 429, "urn:ietf:params:acme:error:rateLimited", "too many"
        )

    ca = ScriptedCA(CA, {"/account": account, "/order": limited})
    acme = client(ca)
    with pytest.raises(AcmeServerError) as caught:
        result(defer.ensureDeferred(acme.new_order(["mirror.test"])))
    assert str(caught.value) == "429 rateLimited: too many"
    assert caught.value.retry_after == 120.0


def polled(statuses: list[str], retry: bytes | None) -> ScriptedCA:
    """An order whose POST-as-GET answers ``statuses`` in turn."""
    answers = iter(statuses)

    def order(request: Request) -> bytes:
        if retry is not None:
            request.setHeader(b"retry-after", retry)
        return json.dumps({"status": next(answers)}).encode()

    return ScriptedCA(CA, {"/order/1": order})


def test_polling_waits_as_long_as_retry_after_says() -> None:
    ca = polled(["processing", "processing", "valid"], b"5")
    clock = Clock()
    acme = client(ca, clock)
    acme.kid = f"{CA}/acct/1"
    done = defer.ensureDeferred(acme.poll(f"{CA}/order/1", {"valid"}))
    assert len(ca.protected) == 1
    clock.advance(4.9)
    assert len(ca.protected) == 1  # not before Retry-After
    clock.advance(0.1)
    assert len(ca.protected) == 2
    clock.advance(5)
    assert result(done) == {"status": "valid"}
    assert all(p["kid"] == f"{CA}/acct/1" for p in ca.protected)


def test_polling_gives_up_at_its_deadline() -> None:
    ca = polled(["pending"] * 100, None)  # no Retry-After: every second
    clock = Clock()
    acme = client(ca, clock)
    done = defer.ensureDeferred(acme.poll(f"{CA}/order/1", {"valid"}, timeout=30))
    clock.pump([1.0] * 30)
    assert not done.called
    clock.advance(1.0)
    with pytest.raises(AcmeError, match="still 'pending' after 30s"):
        result(done)
    assert len(ca.protected) == 32


def test_a_directory_without_new_order_is_refused() -> None:
    ca = ScriptedCA(CA, {})
    ca.routes["/dir"] = lambda request: b'{"newNonce": "x", "newAccount": "y"}'
    with pytest.raises(AcmeError, match="the ACME directory has no newOrder"):
        result(defer.ensureDeferred(client(ca).directory()))
