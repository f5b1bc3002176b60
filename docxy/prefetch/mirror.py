"""Docxy as a registry client sees it, over Docxy's own upstream HTTP client.

Requests go through :class:`~docxy.upstream_client.UpstreamClient` (redirects
followed, credentials dropped when a redirect leaves the origin, https
never downgraded, verified TLS). Bodies are read as they arrive by one
protocol that hashes, counts and keeps at most a cap, and gives up when
the connection stays silent for ``--timeout`` seconds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from ..challenge import parse_challenges
from ..oci import MAX_MANIFEST, USER_AGENT
from ..singleflight import SingleFlight
from ..streaming import IdleWatchdog
from ..upstream_client import UpstreamClient, UpstreamError
from .references import PrefetchError

ERROR_BODY = 64 * 1024


@dataclass
class Body:
    """What arrived: the kept bytes, how many, and whether the end was clean."""

    data: bytes
    received: int
    complete: bool
    why: str = ""


class BodyReader(Protocol):
    """Reads one body: ``update`` sees every byte, at most ``keep`` are kept.

    More than ``keep`` bytes, ``timeout`` seconds without a byte, or a
    cancel abort the connection; a connection that ends early is reported
    in :class:`Body` (``complete`` false) for the caller to word.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        keep: int | None,
        update: Callable[[bytes], object] | None = None,
    ) -> None:
        self.timeout = timeout
        self.keep = keep
        self.update = update
        self.parts: list[bytes] = []
        self.received = 0
        self.done: defer.Deferred[Body] = defer.Deferred(lambda _: self._stop())
        self.watchdog = IdleWatchdog(clock, timeout, self._idle)
        self.watchdog.start()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.watchdog.touch()
        self.received += len(data)
        if self.update is not None:
            self.update(data)
        if self.keep is not None:
            if self.received > self.keep:
                self._fail(f"response larger than {self.keep} bytes")
                return
            self.parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.watchdog.stop()
        if self.done.called:
            return
        complete = bool(reason.check(ResponseDone, PotentialDataLoss))
        why = "" if complete else _why_lost(reason)
        self.done.callback(Body(b"".join(self.parts), self.received, complete, why))

    def _idle(self) -> None:
        self._fail(f"no data for {self.timeout:g} s after {self.received} bytes")

    def _fail(self, why: str) -> None:
        self.done.errback(PrefetchError(why))
        self._stop()

    def _stop(self) -> None:
        self.watchdog.stop()
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


def _why_lost(reason: Failure) -> str:
    inner = getattr(reason.value, "reasons", None)
    if inner:
        return str(inner[0].getErrorMessage())
    return str(reason.getErrorMessage())


@dataclass
class Answer:
    """A response whose headers arrived; read its body once, with ``read``."""

    response: IResponse
    client: MirrorClient
    url: str = ""  # where the answer came from (redirects followed)
    _data: bytes | None = field(default=None, repr=False)
    _delivered: bool = field(default=False, repr=False)

    @property
    def status(self) -> int:
        return int(self.response.code)

    @property
    def length(self) -> int | None:
        """The Content-Length (None when the body is chunked or close-delimited)."""
        length = self.response.length
        return None if length is UNKNOWN_LENGTH else int(length)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        raw = self.response.headers.getRawHeaders(name.encode("ascii")) or []
        return [v.decode("latin-1") for v in raw]

    def read(
        self,
        keep: int | None = MAX_MANIFEST,
        update: Callable[[bytes], object] | None = None,
    ) -> defer.Deferred[Body]:
        if self._delivered:
            return defer.fail(PrefetchError("the body was already read"))
        self._delivered = True
        reader = BodyReader(self.client.clock, self.client.timeout, keep, update)
        self.response.deliverBody(reader)
        return reader.done

    async def small(self, limit: int = MAX_MANIFEST) -> bytes:
        """The whole (small) body, or a PrefetchError if it did not all arrive.

        Read once; asking again gives the same bytes (a 401's body serves
        both the renewal and the error message).
        """
        if self._data is None:
            body = await self.read(limit)
            if not body.complete:
                raise PrefetchError(f"response cut off after {body.received} bytes")
            self._data = body.data
        return self._data

    async def reason(self) -> str:
        """``404 MANIFEST_UNKNOWN: manifest unknown`` from an error envelope."""
        text = f"{self.status} {self.response.phrase.decode('latin-1')}".strip()
        try:
            first = json.loads(await self.small(ERROR_BODY))["errors"][0]
            return f"{self.status} {first['code']}: {first['message']}"
        except (ValueError, LookupError, TypeError, PrefetchError):
            return text


@dataclass
class MirrorClient:
    """GETs to the mirror and its token realm, as ``docxy-prefetch`` sends them."""

    client: UpstreamClient
    clock: IReactorTime
    timeout: float

    async def get(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        sent = Headers({b"user-agent": [USER_AGENT]})
        for name, value in (headers or {}).items():
            sent.setRawHeaders(name.encode("ascii"), [value.encode("latin-1")])
        try:
            answer = await self.client.request(b"GET", url, sent)
        except UpstreamError as e:
            raise PrefetchError(f"{urlsplit(url).netloc}: {e}") from e
        return Answer(answer.response, self, answer.url)


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(user.encode()).decode()


@dataclass
class RepositoryAuth:
    """The ``Authorization`` for one repository, renewed on a 401 challenge."""

    client: MirrorClient
    user: str | None
    scope: str
    header: str | None = None
    _renewals: SingleFlight[str | None, str] = field(
        default_factory=SingleFlight, repr=False
    )

    async def renew(self, answer: Answer, failed: str | None) -> None:
        """New credentials for a 401 ``answer`` to a request sent with ``failed``.

        Blobs are fetched concurrently: the 401s of one expiry share one
        token request, and a 401 for credentials already renewed asks
        nothing again.
        """
        if self.header != failed:
            return
        waiter, _ = self._renewals.wait(failed, lambda: self._credentials(answer))
        self.header = await waiter

    async def _credentials(self, answer: Answer) -> str:
        challenges = []
        for value in answer.all("WWW-Authenticate"):
            try:
                challenges += parse_challenges(value)
            except ValueError:
                continue
        for challenge in challenges:
            realm = challenge.get("realm")
            if challenge.scheme.lower() == "bearer" and realm:
                if self.user and _downgrade(answer.url, realm):
                    raise PrefetchError(
                        f"the mirror's token realm {realm} is plain http: "
                        "not sending the --user credentials in clear text"
                    )
                return await self._token(
                    realm, challenge.get("service"), challenge.get("scope")
                )
        if self.user and any(c.scheme.lower() == "basic" for c in challenges):
            return basic(self.user)
        raise PrefetchError(f"unauthorized ({await answer.reason()})")

    async def _token(self, realm: str, service: str | None, scope: str | None) -> str:
        params = [("scope", self.scope)]
        if scope and scope != self.scope:
            params.append(("scope", scope))
        if service:
            params.insert(0, ("service", service))
        headers = {"Authorization": basic(self.user)} if self.user else {}
        separator = "&" if urlsplit(realm).query else "?"
        answer = await self.client.get(realm + separator + urlencode(params), headers)
        if answer.status != 200:
            raise PrefetchError(f"token request refused: {await answer.reason()}")
        try:
            doc = json.loads(await answer.small())
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise PrefetchError("token realm answered without a token")
        return f"Bearer {token}"


def _downgrade(came_from: str, realm: str) -> bool:
    """Whether an https mirror names a plain-http realm."""
    return urlsplit(came_from).scheme == "https" and urlsplit(realm).scheme != "https"
