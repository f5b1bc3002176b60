"""Repository names, references and the shape of ``/v2/`` paths.

Validation happens before anything is sent upstream: a name that does not
match the distribution grammar (``..``, encoded slashes, upper case) is
answered 400 here and never forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import RegistryError, digest_invalid, name_invalid, not_found, tag_invalid
from .oci import TAG_RE, is_valid_digest, is_valid_name


class Kind(Enum):
    """What a ``/v2/`` path asks for; the value is its path segment."""

    BASE = ""
    MANIFESTS = "manifests"
    BLOBS = "blobs"
    TAGS = "tags"
    REFERRERS = "referrers"


@dataclass(frozen=True)
class Route:
    """A validated ``/v2/`` request: ``name`` as the client spelled it."""

    kind: Kind
    name: str = ""
    reference: str = ""

    def upstream_path(self, library_prefix: bool) -> str:
        if self.kind is Kind.BASE:
            return "/v2/"
        name = upstream_name(self.name, library_prefix)
        if self.kind is Kind.TAGS:
            return f"/v2/{name}/tags/list"
        return f"/v2/{name}/{self.kind.value}/{self.reference}"


def upstream_name(name: str, library_prefix: bool) -> str:
    """Docker Hub keeps official images under ``library/``; short names omit it."""
    if library_prefix and "/" not in name:
        return f"library/{name}"
    return name


def _decode(segment: bytes) -> str | None:
    try:
        return segment.decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_v2_path(segments: list[bytes], full_path: str) -> Route:
    """Map the segments after ``/v2/`` to a Route, or raise a RegistryError.

    A name has any number of components, so the kind is read from the end:
    ``<name>/tags/list`` and ``<name>/<kind>/<reference>``.
    """
    if segments in ([], [b""]):
        return Route(Kind.BASE)
    if len(segments) < 3:
        raise not_found(full_path)
    if segments[-2:] == [b"tags", b"list"]:
        kind, reference = Kind.TAGS, ""
    else:
        kind_segment = _decode(segments[-2]) or ""
        if kind_segment not in ("manifests", "blobs", "referrers"):
            raise not_found(full_path)
        kind = Kind(kind_segment)
        reference = _decode(segments[-1]) or ""
        if not reference:
            raise not_found(full_path)
    raw_name = b"/".join(segments[:-2])
    name = _decode(raw_name)
    if name is None or not is_valid_name(name):
        raise name_invalid(raw_name.decode("ascii", "replace"))
    _check_reference(kind, reference)
    return Route(kind, name, reference)


def _check_reference(kind: Kind, reference: str) -> None:
    if kind is Kind.TAGS:
        return
    if kind is Kind.MANIFESTS and ":" not in reference:
        if TAG_RE.fullmatch(reference) is None:
            raise tag_invalid(reference)
        return
    if not is_valid_digest(reference):
        raise digest_invalid(reference)


__all__ = [
    "TAG_RE",
    "Kind",
    "RegistryError",
    "Route",
    "is_valid_digest",
    "is_valid_name",
    "parse_v2_path",
    "upstream_name",
]
