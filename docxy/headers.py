"""Which headers cross Docxy, in each direction.

The rules come from real failures (see docs/architecture.md): resumable
downloads need Range and If-*; Docker 29 needs the HEAD answer to carry the
same Content-Length a GET would; hop-by-hop headers (and any named in
``Connection``) describe one connection and must not be relayed.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

from .oci import USER_AGENT

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Sent upstream exactly as the client sent them (every value, in order).
FORWARDED_REQUEST_HEADERS = (
    b"accept",
    b"range",
    b"if-range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
)

# Dropped from upstream answers: set by Docxy itself (length, date, server),
# rewritten (WWW-Authenticate), or meaningless/dangerous to relay (Location of
# an upstream or CDN, cookies of the upstream's domain).
_NOT_RELAYED = frozenset(
    {
        b"content-length",
        b"www-authenticate",
        b"location",
        b"set-cookie",
        b"set-cookie2",
        b"date",
        b"server",
        b"alt-svc",
        b"strict-transport-security",
    }
)


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection``: hop-by-hop for this message."""
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return frozenset(names)


def upstream_request_headers(client: Headers, authorization: bool = True) -> Headers:
    """Headers for the upstream request built from the client's."""
    out = Headers({b"user-agent": [USER_AGENT]})
    skip = connection_tokens(client)
    for name in FORWARDED_REQUEST_HEADERS:
        values = client.getRawHeaders(name)
        if values and name not in skip:
            out.setRawHeaders(name, list(values))
    if authorization:
        auth = client.getRawHeaders(b"authorization")
        if auth:
            out.setRawHeaders(b"authorization", list(auth))
    # Digests are over exact bytes: never let anyone re-encode them for us.
    out.setRawHeaders(b"accept-encoding", [b"identity"])
    return out


def relayed_response_headers(upstream: Headers) -> list[tuple[bytes, list[bytes]]]:
    """Upstream response headers that go to the client unchanged."""
    skip = HOP_BY_HOP | _NOT_RELAYED | connection_tokens(upstream)
    return [
        (name, list(values))
        for name, values in upstream.getAllRawHeaders()
        if name.lower() not in skip
    ]
