"""The upstream's 429: an outage for now, answered in the registry envelope.

Docker Hub's abuse limit answers 429 to every path, ``/v2/`` and the token
service included. Docxy treats a 429 as "upstream unavailable" wherever
it has evidence to go on (the cache, the last challenge, an offline token)
and otherwise gives the client a ``TOOMANYREQUESTS`` envelope with the
upstream's ``Retry-After``, whatever the upstream put in its body (a CDN's
429 may be HTML).
"""

from __future__ import annotations

import json
import re

from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .errors import RegistryError, too_many_requests
from .upstream_client import UpstreamError, discard_body, read_small_body

# Integer seconds or an IMF-fixdate: anything else is not relayed.
_RETRY_AFTER = re.compile(
    rb"^(\d{1,10}|[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} [\d:]{8} GMT)$"
)
# Rate-limit headers worth relaying (Docker Hub's and the IETF draft's).
_RATE_HEADERS = re.compile(rb"^(x-)?ratelimit-|^docker-ratelimit-", re.I)
_MAX_BODY = 64 * 1024
DEFAULT_MESSAGE = "the upstream registry is rate-limiting: try again later"


class RateLimitedError(UpstreamError):
    """The upstream answered 429: unavailable for now."""

    def __init__(
        self,
        message: str = DEFAULT_MESSAGE,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__("upstream answered 429")
        self.message = message
        self.headers = headers

    @property
    def retry_after(self) -> bytes | None:
        for name, value in self.headers:
            if name.lower() == b"retry-after":
                return value
        return None

    def envelope(self) -> RegistryError:
        """What a client gets when nothing cached can answer instead."""
        return too_many_requests(self.message, headers=self.headers)


def kept_headers(response: IResponse) -> tuple[tuple[bytes, bytes], ...]:
    return kept_headers_of(response.headers)


def kept_headers_of(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """Retry-After (if well-formed) and the rate-limit headers, to relay."""
    kept: list[tuple[bytes, bytes]] = []
    for name, values in headers.getAllRawHeaders():
        value = values[0].strip() if values else b""
        if name.lower() == b"retry-after":
            if _RETRY_AFTER.match(value):
                kept.append((b"Retry-After", value))
        elif _RATE_HEADERS.match(name) and len(value) < 256:
            kept.append((name, value))
    return tuple(kept)


async def rate_limited(response: IResponse) -> RateLimitedError:
    """The error for a 429 answer; its body is read (small) or dropped."""
    headers = kept_headers(response)
    try:
        body = await read_small_body(response, _MAX_BODY)
    except UpstreamError:
        return RateLimitedError(headers=headers)
    return RateLimitedError(_message(body), headers)


async def unavailable(response: IResponse) -> UpstreamError:
    """The error for a 429 or 5xx answer to a request Docxy made for itself."""
    if response.code == 429:
        return await rate_limited(response)
    await discard_body(response)
    return UpstreamError(f"upstream answered {response.code}")


def is_unavailable(code: int) -> bool:
    """Answers that say nothing about the request, only about the upstream."""
    return code == 429 or code >= 500


def _message(body: bytes) -> str:
    """The upstream's own words (Docker Hub says which limit), if an envelope."""
    try:
        message = json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return DEFAULT_MESSAGE
    if isinstance(message, str) and 0 < len(message) <= 500 and message.isprintable():
        return message
    return DEFAULT_MESSAGE
