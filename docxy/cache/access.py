"""May this client have this cached blob? The upstream decides, as it would.

A client must never receive cached content it could not have pulled from
the upstream itself. So before a cached (or another client's in-flight)
blob is served, Docxy asks the upstream with the client's own credentials:
a ``HEAD`` of that blob in that repository, redirects not followed. Docker
Hub does not count HEADs against the pull limit. A yes is remembered for
``ttl`` seconds per (upstream, repository, digest, credential), where the
credential is only kept as a hash. A client without credentials is asked
about like any other: registries that allow anonymous pulls say yes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from ..headers import USER_AGENT
from ..upstream import UpstreamClient, discard_body

MAX_REMEMBERED = 100_000

Key = tuple[str, str, str, str]


def credential_id(authorization: bytes | None) -> str:
    if not authorization:
        return "-"
    return hashlib.sha256(authorization).hexdigest()


class AccessChecker:
    def __init__(self, client: UpstreamClient, clock: IReactorTime, ttl: float) -> None:
        self.client = client
        self.clock = clock
        self.ttl = ttl
        self._yes: OrderedDict[Key, float] = OrderedDict()

    def remember(
        self, upstream: str, repo: str, digest: str, authorization: bytes | None
    ) -> None:
        key = (upstream, repo, digest, credential_id(authorization))
        self._yes[key] = self.clock.seconds() + self.ttl
        self._yes.move_to_end(key)
        while len(self._yes) > MAX_REMEMBERED:
            self._yes.popitem(last=False)

    def _known(self, key: Key) -> bool:
        expiry = self._yes.get(key)
        if expiry is None:
            return False
        if expiry < self.clock.seconds():
            del self._yes[key]
            return False
        return True

    async def allowed(
        self,
        upstream_url: str,
        upstream: str,
        repo: str,
        digest: str,
        authorization: bytes | None,
    ) -> bool:
        key = (upstream, repo, digest, credential_id(authorization))
        if self._known(key):
            return True
        headers = Headers({b"user-agent": [USER_AGENT]})
        if authorization:
            headers.setRawHeaders(b"authorization", [authorization])
        answer = await self.client.request(
            b"HEAD",
            f"{upstream_url}/v2/{repo}/blobs/{digest}",
            headers,
            follow_redirects=False,
        )
        await discard_body(answer.response)
        if 200 <= answer.response.code < 400:
            self.remember(upstream, repo, digest, authorization)
            return True
        return False
