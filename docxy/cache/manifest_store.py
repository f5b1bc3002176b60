"""Manifests on disk: by digest (immutable) and tags that point at digests.

A manifest's digest is over its exact bytes, so they are stored and served
byte for byte, with the Content-Type the upstream gave. Which manifest a
tag names depends on the client's Accept (a Docker client and an OCI client
may get different ones), so a tag entry is keyed by the Accept set too.
Tag entries are rows of the cache's ledger (:mod:`docxy.cache.ledger`):
a tag change writes one row, and pulls by tag still work after a restart
while the upstream is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..oci import Digest
from .disk_pool import DiskPool
from .ledger import Ledger
from .memory_lru import BytesLRU

log = Logger()

# Every manifest type: registries answer 404 for a manifest whose type the
# request does not accept (distribution does so for OCI without an OCI Accept).
ALL_MANIFEST_TYPES = (
    b"application/vnd.oci.image.index.v1+json, "
    b"application/vnd.oci.image.manifest.v1+json, "
    b"application/vnd.docker.distribution.manifest.list.v2+json, "
    b"application/vnd.docker.distribution.manifest.v2+json, "
    b"application/vnd.docker.distribution.manifest.v1+prettyjws, "
    b"application/vnd.docker.distribution.manifest.v1+json, */*"
)


def accept_key(accept: list[bytes]) -> str:
    """The media types a client accepts, as a stable key (order, q ignored)."""
    types: set[str] = set()
    for value in accept:
        for part in value.decode("latin-1").split(","):
            media = part.split(";", 1)[0].strip().lower()
            if media:
                types.add(media)
    return ",".join(sorted(types))


@dataclass
class TagEntry:
    """The digest a tag named and when the upstream last said so (for freshness)."""

    digest: str
    checked: float  # when the upstream last confirmed the tag


TagKey = tuple[str, str, str, str]  # upstream, repository, tag, Accept set


class DamagedManifestError(Exception):
    """A stored manifest's bytes no longer match its digest (the file is removed)."""


class ManifestStore:
    """Manifests by digest: files, byte for byte, with their Content-Type.

    :meth:`get` and :meth:`put` are the request path's: a recently used
    manifest is answered from memory (:class:`BytesLRU`), the files are read,
    hashed and written in the disk threads, never on the reactor thread.
    :meth:`read` and :meth:`write` are the blocking halves they run there.
    """

    def __init__(
        self, root: Path, disk: DiskPool, memory: BytesLRU | None = None
    ) -> None:
        self.root = root / "manifests"
        self.root.mkdir(parents=True, exist_ok=True)
        self.disk = disk
        self.memory = memory if memory is not None else BytesLRU()

    def media_type(self, digest: str) -> str | None:
        try:
            return (
                self._path(digest).with_suffix(".type").read_bytes().decode("latin-1")
            )
        except (FileNotFoundError, ValueError):
            return None

    def _path(self, digest: str) -> Path:
        return Digest.parse(digest).path(self.root)

    async def get(self, digest: str) -> tuple[bytes, bytes] | None:
        """(bytes, content type) of a stored manifest, verified, or None."""
        stored = self.memory.get(digest)
        if stored is not None:
            return stored
        try:
            stored = await deferToThreadPool(
                self.disk.reactor, self.disk.threads(), self.read, digest
            )
        except DamagedManifestError:
            log.error("cached manifest {digest} is damaged; discarded", digest=digest)
            return None
        if stored is not None:
            self.memory.put(digest, *stored)
        return stored

    async def put(self, digest: str, body: bytes, content_type: bytes) -> None:
        """Store a manifest whose bytes matched ``digest`` (OSError if the
        disk refuses it; then it is not kept in memory either)."""
        await deferToThreadPool(
            self.disk.reactor,
            self.disk.threads(),
            self.write,
            digest,
            body,
            content_type,
        )
        self.memory.put(digest, body, content_type)

    def read(self, digest: str) -> tuple[bytes, bytes] | None:
        """Blocking: the stored manifest if its bytes match ``digest``, None
        if there is none; DamagedManifestError (the file removed) if not."""
        path = self._path(digest)
        try:
            body = path.read_bytes()
            content_type = path.with_suffix(".type").read_bytes()
        except FileNotFoundError:
            return None
        if not Digest.parse(digest).matches(body):
            path.unlink(missing_ok=True)
            raise DamagedManifestError(digest)
        return body, content_type

    def write(self, digest: str, body: bytes, content_type: bytes) -> None:
        """Blocking: the manifest's files, each written atomically.

        Concurrent pulls of one manifest write it from several disk threads
        (and workers) at once: each write has a temporary file of its own,
        or one rename would find the file another had already renamed, and
        that ENOENT would step the whole cache aside.
        """
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, data in ((path.with_suffix(".type"), content_type), (path, body)):
            unique = f"{os.getpid()}.{secrets.token_hex(4)}"
            temp = target.with_name(f".{target.name}.{unique}.tmp")
            _write_atomically(temp, data, target)


class TagIndex:
    """Tags -> digests per Accept set: rows of the ledger, one per change."""

    def __init__(self, ledger: Ledger, store: ManifestStore) -> None:
        self.tags = ledger.tags
        # (upstream, repository, tag) -> the Accept sets it was resolved for.
        self._accepts: dict[tuple[str, str, str], set[str]] = {}
        for upstream, repo, tag, accept in self.tags.rows:
            self._accepts.setdefault((upstream, repo, tag), set()).add(accept)
        self._import(store.root.parent / "tags.json", store)

    @staticmethod
    def tag_key(upstream: str, repo: str, tag: str, accept: str) -> TagKey:
        return (upstream, repo, tag, accept)

    def _import(self, old: Path, store: ManifestStore) -> None:
        """Tag entries of an older Docxy (one JSON file), moved into the ledger."""
        try:
            raw = json.loads(old.read_text())
            for key, value in raw.items():
                upstream, repo, tag, accept = key.split("\n")
                digest = value["digest"]
                media = store.media_type(digest)
                if media is not None:
                    self.set_tag((upstream, repo, tag, accept), digest, media, 0.0)
        except FileNotFoundError:
            return
        except (ValueError, TypeError, KeyError) as e:
            log.warn("old tag index unreadable ({why}); ignored", why=str(e))
        old.unlink(missing_ok=True)

    def tag(self, key: TagKey) -> TagEntry | None:
        row = self.tags.get(key)
        return None if row is None else TagEntry(str(row[0][0]), row[1])

    def fallback_tag(
        self, upstream: str, repo: str, tag: str, accept: str
    ) -> TagEntry | None:
        """The latest entry of this tag under any Accept set, if acceptable."""
        accepted = set(accept.split(",")) if accept else set()
        best: tuple[float, str] | None = None
        for other in self._accepts.get((upstream, repo, tag), ()):
            row = self.tags.get((upstream, repo, tag, other))
            if row is None or (best and best[0] >= row[1]):
                continue
            digest, media = (str(v) for v in row[0])
            if not accepted or "*/*" in accepted or media.lower() in accepted:
                best = (row[1], digest)
        return None if best is None else TagEntry(best[1], best[0])

    def set_tag(
        self, key: TagKey, digest: str, media_type: str, checked: float
    ) -> None:
        """The upstream says (now) that this tag, for this Accept set, is ``digest``."""
        self.tags.put(key, (digest, media_type), checked)
        upstream, repo, tag, accept = key
        self._accepts.setdefault((upstream, repo, tag), set()).add(accept)


def _write_atomically(temp: Path, data: bytes, target: Path) -> None:
    """``target`` gets all of ``data`` or stays as it was (no partial file)."""
    try:
        temp.write_bytes(data)
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
