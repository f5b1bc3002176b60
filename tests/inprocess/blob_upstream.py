"""A blob upstream for the cache tests: serves one blob, can hold it back.

Holding the second half (or the headers) until ``release`` is how a test
sees what Docxy does while a fill is in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET, Request

from tests.support.digests import sha256_digest

BLOB = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = sha256_digest(BLOB)
PATH = f"/v2/library/alpine/blobs/{DIGEST}".encode()
CLIENT_PATH = f"/v2/alpine/blobs/{DIGEST}"


class Blob:
    """Serves a blob; ``hold`` keeps the second half back until ``release``."""

    def __init__(
        self, data: bytes = BLOB, hold: bool = False, hold_headers: bool = False
    ) -> None:
        self.data = data
        self.hold = hold
        self.hold_headers = hold_headers
        self.gets = 0
        self.released: defer.Deferred[None] = defer.Deferred()
        self.allowed: Callable[[Request], bool] = lambda request: True

    def __call__(self, request: Request) -> bytes | int:
        if not self.allowed(request):
            request.setResponseCode(401)
            realm = f"http://{(request.getHeader(b'host') or b'').decode()}/token"
            request.setHeader(b"www-authenticate", f'Bearer realm="{realm}"'.encode())
            return b""
        request.setHeader(b"content-length", b"%d" % len(self.data))
        if request.method == b"HEAD":
            return b""
        self.gets += 1
        if self.hold_headers:

            def answer(_: object) -> None:
                request.write(self.data)
                request.finish()

            self.released.addCallback(answer)
            return NOT_DONE_YET
        if not self.hold:
            return self.data
        half = len(self.data) // 2
        request.write(self.data[:half])

        def rest(_: object) -> None:
            request.write(self.data[half:])
            request.finish()

        self.released.addCallback(rest)
        return NOT_DONE_YET
