"""Docxy's own upstream tokens: one fetch per scope, shared, renewed shortly
before ``expires_in`` (task.Clock), the account only for the right realm."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from docxy.credentials import Credentials
from docxy.mirror_tokens import MirrorTokens
from docxy.realm import RealmDirectory
from docxy.upstream_client import UpstreamResponse
from docxy.upstream_set import Upstream

ACCOUNT = Credentials("bot", "pw")


@dataclass
class Answer:
    code: int
    body: bytes
    headers: Headers = field(default_factory=Headers)

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


@dataclass
class StubClient:
    """Answers token requests in memory and records them."""

    reactor: Clock
    expires_in: int = 300
    asked: list[tuple[str, Headers]] = field(default_factory=list)
    gate: defer.Deferred[None] | None = None
    metrics: None = None
    budget: None = None

    async def request(
        self, method: bytes, url: str, headers: Headers, *args: Any, **kw: Any
    ) -> UpstreamResponse:
        self.asked.append((url, headers))
        if self.gate is not None:
            await self.gate
        body = json.dumps(
            {"token": f"t{len(self.asked)}", "expires_in": self.expires_in}
        )
        return UpstreamResponse(Answer(200, body.encode()), url, 0)  # type: ignore[arg-type]


def tokens_for(client: StubClient, realm: str) -> MirrorTokens:
    upstream = Upstream("hub", "https://registry.example", credentials=ACCOUNT)
    realms = RealmDirectory(client, upstream.url, realm, "svc")  # type: ignore[arg-type]
    return MirrorTokens(client, client.reactor, upstream, realms)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_one_fetch_per_scope_shared_until_shortly_before_expiry() -> None:
    clock = Clock()
    client = StubClient(clock, gate=defer.Deferred())
    tokens = tokens_for(client, "https://registry.example/token")
    waiting = [
        defer.ensureDeferred(tokens.authorization("repository:a:pull"))
        for _ in range(3)
    ]
    assert len(client.asked) == 1  # concurrent callers share one fetch
    assert client.gate is not None
    client.gate.callback(None)
    client.gate = None
    assert [await w for w in waiting] == [b"Bearer t1"] * 3
    assert await tokens.authorization("repository:a:pull") == b"Bearer t1"
    clock.advance(300 - 30 - 1)
    assert await tokens.authorization("repository:a:pull") == b"Bearer t1"
    clock.advance(1)  # 30 s before expires_in: renewed
    assert await tokens.authorization("repository:a:pull") == b"Bearer t2"
    assert await tokens.authorization("repository:b:pull") == b"Bearer t3"
    assert len(client.asked) == 3
    url, headers = client.asked[0]
    assert "scope=repository%3Aa%3Apull" in url and "service=svc" in url
    assert headers.getRawHeaders(b"authorization") == [ACCOUNT.basic()]


@pytest_twisted.ensureDeferred
async def test_a_foreign_or_plain_http_realm_is_asked_anonymously() -> None:
    for realm in ("https://evil.example/token", "http://registry.example/token"):
        client = StubClient(Clock())
        tokens = tokens_for(client, realm)
        assert await tokens.authorization("repository:a:pull") == b"Bearer t1"
        assert not client.asked[0][1].hasHeader(b"authorization"), realm
