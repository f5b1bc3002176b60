"""The registries Docxy mirrors: built-in presets and configured upstreams.

Each upstream says how clients reach it: ``namespaces`` (containerd's
``?ns=`` values, OCI "Registry Proxying"), path ``aliases``
(``/v2/<alias>/<name>/...`` for podman/CRI-O mirror locations,
``/<alias>/v2/...`` for containerd host URLs with a path) and ``hosts``
(the Host header, for ``docker pull ghcr.example.com/owner/img``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .credentials import Credentials

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_NAMESPACES = ("docker.io", "registry-1.docker.io", "index.docker.io")

# An upstream's name is used as a path segment (/auth/<name>/token).
UPSTREAM_NAME_RE = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
# A path alias is the first component(s) of a repository path.
ALIAS_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")


@dataclass(frozen=True)
class Upstream:
    """One mirrored registry and the ways clients name it."""

    name: str
    url: str
    library_prefix: bool = False
    namespaces: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    realm: str | None = None
    service: str | None = None
    # Hosts besides its own that may receive ``credentials`` (realm-hosts).
    realm_hosts: tuple[str, ...] = ()
    # The mirror's own account there (docxy.credentials); never in a repr.
    credentials: Credentials | None = field(default=None, repr=False, compare=False)


def _preset(name: str, url: str, *namespaces: str, library: bool = False) -> Upstream:
    # The registry's host name is always an alias: it cannot collide with a
    # Docker Hub namespace (those never contain a dot).
    return Upstream(
        name=name,
        url=url,
        library_prefix=library,
        namespaces=(name, *namespaces),
        aliases=(name,),
    )


PRESETS: dict[str, Upstream] = {
    preset.name: preset
    for preset in (
        _preset("docker.io", DOCKER_HUB_URL, *DOCKER_HUB_NAMESPACES[1:], library=True),
        _preset("ghcr.io", "https://ghcr.io"),
        _preset("quay.io", "https://quay.io"),
        _preset("registry.k8s.io", "https://registry.k8s.io", "k8s.gcr.io"),
        _preset("gcr.io", "https://gcr.io"),
        _preset("mcr.microsoft.com", "https://mcr.microsoft.com"),
        _preset("public.ecr.aws", "https://public.ecr.aws"),
        _preset("nvcr.io", "https://nvcr.io"),
    )
}


def normalize_host(host: str) -> str:
    """Host header or configured host name -> comparable form.

    Case-folded, port and a trailing dot removed, IPv6 brackets kept off.
    """
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else ""
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return host  # not [v6] or [v6]:port: matches nothing configured
        return host[1:end]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


@dataclass
class UpstreamSet:
    """All configured upstreams, with the lookups routing needs."""

    upstreams: tuple[Upstream, ...]
    default: Upstream
    by_namespace: dict[str, Upstream] = field(init=False)
    by_alias: dict[str, Upstream] = field(init=False)
    by_host: dict[str, Upstream] = field(init=False)

    def __post_init__(self) -> None:
        self.by_namespace = _index(self.upstreams, "namespace", normalize_host)
        self.by_alias = _index(self.upstreams, "alias", lambda a: a)
        self.by_host = _index(self.upstreams, "host", normalize_host)

    def alias_at_start(self, name: str) -> tuple[str, Upstream] | None:
        """The longest alias that ``name`` starts with, as whole components."""
        matches = [a for a in self.by_alias if name.startswith(a + "/")]
        if not matches:
            return None
        alias = max(matches, key=len)
        return alias, self.by_alias[alias]


class DuplicateError(ValueError):
    """Two upstreams claim the same namespace, alias or host."""


def _index(
    upstreams: Iterable[Upstream], what: str, key: Callable[[str], str]
) -> dict[str, Upstream]:
    plural = {"alias": "aliases"}.get(what, what + "s")
    index: dict[str, Upstream] = {}
    for upstream in upstreams:
        for value in getattr(upstream, plural):
            normalized = key(value)
            other = index.get(normalized)
            if other is not None and other.name != upstream.name:
                raise DuplicateError(
                    f"{what} {value!r} is claimed by both "
                    f"{other.name!r} and {upstream.name!r}"
                )
            index[normalized] = upstream
    return index
