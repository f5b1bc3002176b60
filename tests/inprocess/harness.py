"""Docxy's real Site and a scriptable upstream, both on 127.0.0.1 in-process.

For behaviour the real registry cannot be made to show on demand (a CDN
without HEAD lengths, cross-origin redirects, redirect loops, stalls).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from docxy.cache.pullthrough import PullThroughCache
from docxy.config import build_config
from docxy.service import build_site

Handler = Callable[[Request], bytes | int]


@dataclass
class Seen:
    method: bytes
    uri: bytes
    headers: Headers
    body: bytes


class FakeUpstream(Resource):
    """Answers by path with scripted handlers and records every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[bytes, Handler] = {}
        self.seen: list[Seen] = []
        self.port: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def render(self, request: Request) -> bytes | int:
        body = request.content.read() if request.content is not None else b""
        self.seen.append(
            Seen(request.method, request.uri, request.requestHeaders.copy(), body)
        )
        handler = self.routes.get(request.path)
        if handler is None:
            request.setResponseCode(404)
            return b'{"errors":[{"code":"NOT_FOUND"}]}'
        return handler(request)


@dataclass
class Reply:
    code: int
    headers: Headers
    body: bytes
    # Content-Length of a GET: twisted keeps it out of ``headers``; None if
    # the answer came chunked.
    length: int | None


def error_of(reply: Reply) -> dict[str, object]:
    """The one error of a reply's registry envelope (code, message, detail)."""
    errors = json.loads(reply.body)["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}
    entry: dict[str, object] = errors[0]
    return entry


@dataclass
class Harness:
    upstream: FakeUpstream
    docxy_port: Any
    public_url: str
    pool: Any
    extra: list[Any] = field(default_factory=list)
    site: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.docxy_port.getHost().port}"

    @property
    def cache(self) -> PullThroughCache:
        """The Site's cache (started with a ``cache-dir``)."""
        cache = self.docxy_port.factory.resource.children[b"v2"].cache
        assert isinstance(cache, PullThroughCache)
        return cache

    async def request(
        self,
        method: bytes,
        path: str,
        headers: dict[bytes, list[bytes]] | None = None,
        body: bytes | None = None,
        source: str | None = None,
    ) -> Reply:
        """Docxy's whole answer; ``source``: the client's own address."""
        agent = Agent(reactor, bindAddress=(source, 0) if source else None)
        response: IResponse = await agent.request(
            method,
            (self.url + path).encode(),
            Headers(headers or {}),
            None if body is None else FileBodyProducer(BytesIO(body)),
        )
        # treq's content(), not readBody(): readBody warns on every Agent
        # response (its transport proxy has no abortConnection, twisted#8227).
        answer = await treq.content(response)
        length = None if response.length is UNKNOWN_LENGTH else response.length
        return Reply(response.code, response.headers, answer, length)

    async def post_form(self, path: str, form: bytes) -> Reply:
        """A POST of ``application/x-www-form-urlencoded`` (an OAuth token form)."""
        headers = {b"content-type": [b"application/x-www-form-urlencoded"]}
        return await self.request(b"POST", path, headers, form)

    async def stop(self) -> None:
        await self.docxy_port.stopListening()
        await self.pool.closeCachedConnections()
        for port in [self.upstream.port, *self.extra]:
            await port.stopListening()


async def listen(resource: Resource) -> Any:
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(resource)
    )


async def start(
    upstream: FakeUpstream, settings: dict[str, object] | None = None
) -> Harness:
    """Docxy in front of ``upstream``; a plain proxy unless a cache-dir is set."""
    upstream.port = await listen(upstream)
    settings = settings or {}
    config = build_config(
        {
            "upstream": upstream.url,
            "public-url": "https://mirror.example",
            "library-prefix": "on",
            "no-cache": "cache-dir" not in settings,
            **settings,
        }
    )
    site, pool = build_site(config, reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    return Harness(upstream, port, config.public_url, pool, site=site)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` on the reactor (never a fixed sleep)."""
    for _ in range(3000):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def never_answers(request: Request) -> int:
    from twisted.web.server import NOT_DONE_YET

    d: defer.Deferred[None] = defer.Deferred()
    request.notifyFinish().addBoth(lambda _: d)
    return NOT_DONE_YET


def token_answer(token: str) -> bytes:
    """A token endpoint's answer with ``token`` (300 s)."""
    return json.dumps({"token": token, "expires_in": 300}).encode()


def challenge_to(realm: str) -> Callable[[Request], bytes]:
    """An upstream handler that answers 401 with a Bearer challenge to ``realm``."""

    def handler(request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(
            b"www-authenticate", f'Bearer realm="{realm}",service="svc"'.encode()
        )
        return b'{"errors":[{"code":"UNAUTHORIZED"}]}'

    return handler


def raw_get(docxy: Harness, path: str, rcvbuf: int | None = None) -> socket.socket:
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(("127.0.0.1", docxy.docxy_port.getHost().port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
    client.setblocking(False)
    return client


def drain(client: socket.socket, into: bytearray) -> None:
    """Read what has arrived, without waiting."""
    while True:
        try:
            data = client.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            return
        into += data


async def read_whole(client: socket.socket, body: bytes) -> tuple[bytes, bytes]:
    """Head and body of an answer ending in ``body``'s last bytes, read as
    they arrive."""
    received = bytearray()

    def all_arrived() -> bool:
        drain(client, received)
        return b"\r\n\r\n" in received and received.endswith(body[-4096:])

    await until(all_arrived, "the rest of the body")
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    return head, rest
