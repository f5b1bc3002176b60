"""Manifests on disk: by digest (immutable) and tags that point at digests.

A manifest's digest is over its exact bytes, so they are stored and served
byte for byte, with the Content-Type the upstream gave. Which manifest a
tag names depends on the client's Accept (a Docker client and an OCI client
may get different ones), so a tag entry is keyed by the Accept set too.
Tag entries are kept in one JSON file, rewritten atomically, so pulls by
tag still work after a restart while the upstream is down.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from twisted.logger import Logger

from ..oci import Digest

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
    digest: str
    checked: float  # when the upstream last confirmed the tag


class ManifestStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "manifests"
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = root / "tags.json"
        self.tags: dict[str, TagEntry] = {}
        self._load()

    @staticmethod
    def tag_key(upstream: str, repo: str, tag: str, accept: str) -> str:
        return f"{upstream}\n{repo}\n{tag}\n{accept}"

    def _load(self) -> None:
        try:
            raw = json.loads(self.index_path.read_text())
            self.tags = {k: TagEntry(**v) for k, v in raw.items()}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as e:
            log.warn("tag index unreadable ({why}); starting empty", why=str(e))

    def _save(self) -> None:
        temp = self.index_path.with_suffix(f".{os.getpid()}.tmp")
        data = json.dumps({k: asdict(v) for k, v in self.tags.items()}).encode()
        _write_atomically(temp, data, self.index_path)

    def _path(self, digest: str) -> Path:
        return Digest.parse(digest).path(self.root)

    def get(self, digest: str) -> tuple[bytes, bytes] | None:
        """(bytes, content type) of a stored manifest, verified, or None."""
        path = self._path(digest)
        try:
            body = path.read_bytes()
            content_type = path.with_suffix(".type").read_bytes()
        except FileNotFoundError:
            return None
        if not Digest.parse(digest).matches(body):
            log.error("cached manifest {digest} is damaged; discarded", digest=digest)
            path.unlink(missing_ok=True)
            return None
        return body, content_type

    def put(self, digest: str, body: bytes, content_type: bytes) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, data in ((path.with_suffix(".type"), content_type), (path, body)):
            temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            _write_atomically(temp, data, target)

    def tag(self, key: str) -> TagEntry | None:
        return self.tags.get(key)

    def fallback_tag(
        self, upstream: str, repo: str, tag: str, accept: str
    ) -> TagEntry | None:
        """The latest entry of this tag under any Accept set, if acceptable."""
        prefix = self.tag_key(upstream, repo, tag, "")
        accepted = set(accept.split(",")) if accept else set()
        best: TagEntry | None = None
        for key, entry in self.tags.items():
            if not key.startswith(prefix) or (best and best.checked >= entry.checked):
                continue
            type_file = self._path(entry.digest).with_suffix(".type")
            try:
                media = type_file.read_bytes().decode("latin-1").lower()
            except FileNotFoundError:
                continue
            if not accepted or "*/*" in accepted or media in accepted:
                best = entry
        return best

    def set_tag(self, key: str, digest: str, checked: float) -> None:
        old = self.tags.get(key)
        self.tags[key] = TagEntry(digest, checked)
        if old is None or old.digest != digest:
            self._save()  # a freshness bump alone need not touch the disk


def _write_atomically(temp: Path, data: bytes, target: Path) -> None:
    """``target`` gets all of ``data`` or stays as it was (no partial file)."""
    try:
        temp.write_bytes(data)
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
