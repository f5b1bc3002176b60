"""Answers while the upstream is unreachable, so cached images still pull.

dockerd and podman ping ``/v2/`` and fetch a token before any manifest; with
the upstream down both would fail before the cache is even asked. With a
cache, Docxy answers the ping with the challenge it saw last, and a token
request with an *offline token*. That token grants nothing by itself: the
cache still serves only what was public, or allowed for the very same
credential, before the upstream went away (see :mod:`docxy.cache.access`).
"""

from __future__ import annotations

from twisted.web.server import Request

from ..challenge import Challenge
from ..errors import API_VERSION, API_VERSION_HEADER, RegistryError
from ..notes import record
from ..own_tokens import OFFLINE_TOKEN, write_token
from ..routing import Mirror


def answer_ping(request: Request, mirror: Mirror) -> bool:
    """The last known challenge; False if Docxy never saw one."""
    realm = mirror.realms.known
    if realm is None:
        return False
    challenge = Challenge("Bearer", [("realm", mirror.ping_realm)])
    if realm.service:
        challenge.params.append(("service", realm.service))
    body = RegistryError(401, "UNAUTHORIZED", "authentication required").body()
    request.setResponseCode(401)
    request.setHeader(API_VERSION_HEADER, API_VERSION)
    request.setHeader(b"www-authenticate", challenge.render().encode("latin-1"))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    record(request, cache="offline")
    request.write(body)
    request.finish()
    return True


def answer_token(request: Request) -> None:
    record(request, cache="offline")
    write_token(request, OFFLINE_TOKEN, 60)
