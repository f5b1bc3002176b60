"""Tokens Docxy issues itself, and keeps to itself.

Clients ask the realm of their ``/v2/`` ping for a token before any pull,
whatever upstream the repository turns out to live on. Two answers come
from Docxy rather than from an upstream's token service:

- the *anonymous* token, for an upstream without a token service (a plain
  internal registry behind a path alias: its ``/v2/`` is open, yet podman
  and skopeo took the default upstream's challenge and ask for a token);
- the *offline* token, while an upstream's realm is unreachable
  (:mod:`docxy.cache.offline`).

Neither grants anything. :func:`is_own_token` recognises them as a request
comes in, and the request is treated as anonymous from then on: they are
never forwarded to any upstream.
"""

from __future__ import annotations

import json
import time

from twisted.web.server import Request

ANONYMOUS_TOKEN = "docxy-anonymous"
OFFLINE_TOKEN = "docxy-offline"
_OWN = frozenset({ANONYMOUS_TOKEN.encode(), OFFLINE_TOKEN.encode()})


def is_own_token(authorization: bytes) -> bool:
    """Whether an ``Authorization`` value carries one of Docxy's own tokens.

    An offline token may say whose it is (``docxy-offline.<who>.<expires>.<mac>``,
    see :mod:`docxy.cache.offline`): the cache reads that, nothing else.
    """
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    return scheme.lower() == b"bearer" and (
        token in _OWN or token.startswith(OFFLINE_TOKEN.encode() + b".")
    )


def write_token(request: Request, token: str, expires_in: int) -> None:
    """Answer a token request the way a Docker token service does."""
    body = json.dumps(
        {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    ).encode()
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
