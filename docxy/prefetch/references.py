"""What to prefetch: image references, platforms, and the chosen index entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..oci import TAG_RE, is_valid_digest, is_valid_name

# Docker Hub's other names; Docxy's alias for it is docker.io.
_HUB_HOSTS = frozenset({"index.docker.io", "registry-1.docker.io"})


class PrefetchError(Exception):
    """Why one image could not be prefetched (one line)."""


@dataclass(frozen=True)
class Reference:
    """``[registry/]name[:tag][@digest]``; ``registry`` is None without a host."""

    registry: str | None
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """The repository as Docxy's ``/v2/`` paths name it."""
        return f"{self.registry}/{self.name}" if self.registry else self.name

    @property
    def reference(self) -> str:
        """What the manifest is asked for by: the digest wins over the tag."""
        return self.digest or self.tag or "latest"


def parse_reference(text: str) -> Reference:
    """Parse an image reference the way ``docker pull`` reads one.

    The first component is a registry host when it contains a ``.`` or is
    ``localhost`` (Docker's rule). A host with a port is refused: it cannot
    be a Docxy path alias.
    """
    rest = text.strip()
    if not rest:
        raise ValueError("empty image reference")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not is_valid_digest(digest):
            raise ValueError(f"invalid digest {digest!r}")
    tag = None
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
        if TAG_RE.fullmatch(tag) is None:
            raise ValueError(f"invalid tag {tag!r}")
    registry = None
    first, slash, remainder = rest.partition("/")
    if slash and ":" in first:
        raise ValueError("a registry host with a port cannot be a Docxy path alias")
    if slash and ("." in first or first == "localhost"):
        registry, rest = first.lower(), remainder
        if registry in _HUB_HOSTS:
            registry = "docker.io"
    if not is_valid_name(rest) or (registry and not is_valid_name(registry)):
        raise ValueError(f"invalid repository name {rest!r}")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, rest, tag, digest)


@dataclass(frozen=True)
class Platform:
    """``os/arch[/variant]`` as ``docker pull --platform`` names one."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture, self.variant]
        return "/".join(p for p in parts if p)

    def matches(self, entry: dict[str, object]) -> bool:
        """Does an index entry's ``platform`` match? No variant: any variant."""
        if entry.get("os") != self.os or entry.get("architecture") != self.architecture:
            return False
        return self.variant is None or entry.get("variant") == self.variant


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]``, as ``docker pull --platform`` takes it."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{text!r}: expected os/arch or os/arch/variant")
    return Platform(*parts)


def select_manifests(
    index: dict[str, object], platforms: Sequence[Platform] | None
) -> list[dict[str, object]]:
    """The index entries to fetch: every one (None) or the platforms' own."""
    entries = [e for e in as_list(index.get("manifests")) if isinstance(e, dict)]
    if platforms is None:
        return entries
    chosen = [
        e
        for e in entries
        if any(p.matches(as_dict(e.get("platform"))) for p in platforms)
    ]
    if not chosen:
        have = sorted({platform_name(as_dict(e.get("platform"))) for e in entries})
        wanted = ", ".join(str(p) for p in platforms)
        raise PrefetchError(
            f"no manifest for {wanted} in the index (it has: {', '.join(have)})"
        )
    return chosen


def platform_name(platform: dict[str, object]) -> str:
    """``linux/arm64/v8`` for an index entry's ``platform`` (``?`` if none)."""
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p) or "?"


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}
