"""Errors Docxy itself answers, in the registry error envelope.

Clients (docker, containerd, skopeo) print ``errors[0].message``; a plain
text or HTML body would show up as a parse error instead of the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from twisted.web.resource import Resource
from twisted.web.server import Request

API_VERSION_HEADER = b"Docker-Distribution-API-Version"
API_VERSION = b"registry/2.0"
# Client input echoed in an error's detail: enough to recognise, not a flood.
SHOWN = 100


def shown(text: str) -> str:
    """``text`` as an error's detail may echo it (at most SHOWN characters)."""
    return text[:SHOWN]


@dataclass(frozen=True)
class RegistryError(Exception):
    """An error answer: HTTP status plus one entry of the envelope."""

    status: int
    code: str
    message: str
    detail: object = None
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())

    def body(self) -> bytes:
        entry = {"code": self.code, "message": self.message, "detail": self.detail}
        return json.dumps({"errors": [entry]}).encode("utf-8")


def name_invalid(name: str) -> RegistryError:
    return RegistryError(400, "NAME_INVALID", "invalid repository name", {"name": name})


def scope_invalid(reason: str, scope: str | None) -> RegistryError:
    """A token request for something no client of a mirror may ask for."""
    detail = {"scope": shown(scope)} if scope is not None else None
    return RegistryError(400, "UNSUPPORTED", f"invalid token scope: {reason}", detail)


def digest_invalid(digest: str) -> RegistryError:
    return RegistryError(400, "DIGEST_INVALID", "invalid digest", {"digest": digest})


def tag_invalid(tag: str) -> RegistryError:
    return RegistryError(400, "TAG_INVALID", "invalid tag", {"tag": tag})


def unsupported_method(method: str, allowed: tuple[bytes, ...]) -> RegistryError:
    return RegistryError(
        405,
        "UNSUPPORTED",
        "Docxy is a read-only mirror: this method is not supported here",
        {"method": method},
        headers=((b"Allow", b", ".join(allowed)),),
    )


def range_invalid(size: int) -> RegistryError:
    """A ``Range`` outside a blob of ``size`` bytes (416, as distribution says)."""
    return RegistryError(
        416,
        "RANGE_INVALID",
        "requested range not satisfiable",
        {"size": size},
        headers=((b"Content-Range", b"bytes */%d" % size),),
    )


def too_many_requests(
    message: str,
    detail: object = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> RegistryError:
    """429 ``TOOMANYREQUESTS``, with the ``Retry-After`` the client should wait."""
    return RegistryError(429, "TOOMANYREQUESTS", message, detail, headers=headers)


def not_found(path: str) -> RegistryError:
    return RegistryError(404, "NOT_FOUND", "no such endpoint", {"path": path})


def upstream_unavailable(reason: str) -> RegistryError:
    return RegistryError(502, "UNAVAILABLE", "upstream registry unavailable", reason)


def upstream_timeout() -> RegistryError:
    return RegistryError(
        504, "UNAVAILABLE", "upstream registry did not answer in time", None
    )


def internal_error() -> RegistryError:
    return RegistryError(500, "UNKNOWN", "internal error in the mirror", None)


def write_error(request: Request, error: RegistryError) -> None:
    """Answer ``request`` with ``error``, unless the client is already gone."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    body = error.body()
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
    request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
    for name, value in error.headers:
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


class ErrorResource(Resource):
    """A leaf that answers every method with one fixed error."""

    isLeaf = True

    def __init__(self, error: RegistryError) -> None:
        super().__init__()
        self.error = error

    def render(self, request: Request) -> int:
        from twisted.web.server import NOT_DONE_YET

        write_error(request, self.error)
        return NOT_DONE_YET
