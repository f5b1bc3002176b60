"""What the cache shares between blobs and manifests: answers and checks."""

from __future__ import annotations

from twisted.web.server import Request

from ..errors import API_VERSION, API_VERSION_HEADER
from ..routing import Target
from ..upstream_client import UpstreamError
from .access import AccessChecker
from .counters import Counters
from .evidence import Who

# Not sent when the cache fetches for itself: it wants the whole thing.
CONDITIONAL = (b"range", b"if-range", b"if-match", b"if-none-match")


def cached_headers(
    request: Request,
    digest: str,
    code: int,
    content_type: bytes,
    length: int | None,
) -> None:
    """Status and headers of an answer from the cache."""
    request.setResponseCode(code)
    headers = request.responseHeaders
    headers.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
    if content_type:
        headers.setRawHeaders(b"content-type", [content_type])
    headers.setRawHeaders(b"docker-content-digest", [digest.encode("ascii")])
    headers.setRawHeaders(b"etag", [b'"%s"' % digest.encode("ascii")])
    if length is not None:
        headers.setRawHeaders(b"content-length", [b"%d" % length])


async def may_have(
    access: AccessChecker,
    counters: Counters,
    target: Target,
    repo: str,
    digest: str,
    who: Who,
    kind: str,
) -> bool:
    """Ask the upstream (via ``access``); if it cannot be asked, use old evidence."""
    try:
        return await access.allowed(target.mirror, repo, digest, who, kind)
    except UpstreamError:
        upstream = target.mirror.upstream.name
        if access.remembered(upstream, repo, digest, who):
            counters.stale_serves += 1
            return True
        raise
