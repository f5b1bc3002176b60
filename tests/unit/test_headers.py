"""Which headers cross Docxy in each direction."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from docxy import __version__
from docxy.headers import relayed_response_headers, upstream_request_headers

ACCEPTS = [
    b"application/vnd.oci.image.index.v1+json",
    b"application/vnd.docker.distribution.manifest.v2+json, */*",
]


def client_headers() -> Headers:
    return Headers(
        {
            b"accept": ACCEPTS,
            b"authorization": [b"Bearer tok"],
            b"range": [b"bytes=5-"],
            b"if-range": [b'"etag"'],
            b"if-none-match": [b'"x"'],
            b"cookie": [b"session=1"],
            b"host": [b"evil.example"],
            b"x-forwarded-host": [b"evil.example"],
            b"accept-encoding": [b"gzip"],
            b"user-agent": [b"docker/20.10"],
        }
    )


def test_forwarded_request_headers() -> None:
    out = upstream_request_headers(client_headers())
    assert out.getRawHeaders(b"accept") == ACCEPTS
    assert out.getRawHeaders(b"authorization") == [b"Bearer tok"]
    assert out.getRawHeaders(b"range") == [b"bytes=5-"]
    assert out.getRawHeaders(b"if-range") == [b'"etag"']
    assert out.getRawHeaders(b"if-none-match") == [b'"x"']
    assert out.getRawHeaders(b"user-agent") == [f"docxy/{__version__}".encode()]
    assert out.getRawHeaders(b"accept-encoding") == [b"identity"]
    for name in (b"cookie", b"host", b"x-forwarded-host"):
        assert not out.hasHeader(name)


def test_authorization_can_be_withheld() -> None:
    out = upstream_request_headers(client_headers(), authorization=False)
    assert not out.hasHeader(b"authorization")


def test_headers_named_in_connection_are_not_forwarded() -> None:
    headers = client_headers()
    headers.setRawHeaders(b"connection", [b"keep-alive, Range"])
    assert not upstream_request_headers(headers).hasHeader(b"range")


def test_relayed_response_headers() -> None:
    upstream = Headers(
        {
            b"content-type": [b"application/vnd.oci.image.manifest.v1+json"],
            b"docker-content-digest": [b"sha256:abc"],
            b"docker-distribution-api-version": [b"registry/2.0"],
            b"ratelimit-remaining": [b"20;w=21600"],
            b"content-length": [b"100"],
            b"transfer-encoding": [b"chunked"],
            b"connection": [b"close, X-Hop"],
            b"x-hop": [b"1"],
            b"keep-alive": [b"timeout=5"],
            b"location": [b"https://cdn.example/blob"],
            b"set-cookie": [b"a=b"],
            b"www-authenticate": [b'Bearer realm="https://auth/"'],
        }
    )
    relayed = dict(relayed_response_headers(upstream))
    assert set(relayed) == {
        b"Content-Type",
        b"Docker-Content-Digest",
        b"Docker-Distribution-Api-Version",
        b"Ratelimit-Remaining",
    }
