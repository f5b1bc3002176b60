"""Pending ACME HTTP-01 challenges, shared by the ACME endpoint and every Site.

The ACME endpoint (a twistd endpoint plugin) and the Resource tree are built
separately by twistd and never see each other, so the tokens live in one
process-wide store: the endpoint adds a token while an order is being
validated, and ``/.well-known/acme-challenge/<token>`` on any plain-HTTP
listener of the daemon answers from it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.resource import Resource
from twisted.web.server import Request

from ..errors import RegistryError, write_error


class Http01Store:
    """Key authorizations of pending HTTP-01 challenges, by token."""

    def __init__(self) -> None:
        self._tokens: dict[str, bytes] = {}
        # Lookups of tokens another process set (a worker's: docxy.tls.shared).
        self._followed: list[Callable[[str], bytes | None]] = []

    def follow(self, lookup: Callable[[str], bytes | None]) -> None:
        """Also answer the tokens ``lookup`` knows (as a request asks)."""
        if lookup not in self._followed:
            self._followed.append(lookup)

    def add(self, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization.encode("ascii")

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)

    def get(self, token: str) -> bytes | None:
        if token in self._tokens:
            return self._tokens[token]
        for lookup in self._followed:
            found = lookup(token)
            if found is not None:
                return found
        return None


HTTP01 = Http01Store()


class AcmeChallengeResource(Resource):
    """``/.well-known/acme-challenge/<token>``: the key authorization, or 404."""

    isLeaf = True

    def __init__(self, store: Http01Store = HTTP01) -> None:
        super().__init__()
        self.store = store

    def render_GET(self, request: Request) -> bytes | int:
        postpath = request.postpath or []
        token = postpath[0].decode("ascii", "replace") if len(postpath) == 1 else ""
        answer = self.store.get(token) if token else None
        if answer is None:
            from twisted.web.server import NOT_DONE_YET

            write_error(
                request,
                RegistryError(404, "NOT_FOUND", "no such ACME challenge", None),
            )
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/octet-stream")
        return answer
