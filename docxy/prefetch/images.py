"""Prefetching one image: its manifests, then every blob, read and verified.

Manifests are walked one at a time (an index, then the chosen platforms'
manifests); the blobs are then fetched ``concurrency`` at a time. The first
failed blob fails the image and cancels the others, so no connection is
left reading for an image that already failed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet import defer

from ..oci import Digest, Scope, is_valid_digest
from .mirror import ERROR_BODY, Answer, MirrorClient, RepositoryAuth
from .references import (
    Platform,
    PrefetchError,
    Reference,
    as_dict,
    as_list,
    platform_name,
    select_manifests,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_FOREIGN_MARKERS = ("foreign", "nondistributable")


@dataclass
class Summary:
    """What one image's prefetch fetched: the line printed for it."""

    digest: str = ""
    platforms: list[str] = field(default_factory=list)
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    skipped: int = 0  # foreign / non-distributable layers, never in a registry


@dataclass(frozen=True)
class Blob:
    """A blob a manifest names; ``size`` None when the manifest gave none."""

    digest: str
    size: int | None


class ImagePrefetcher:
    """Pulls images through the mirror as a client does, keeping nothing."""

    def __init__(
        self,
        mirror: str,
        client: MirrorClient,
        user: str | None,
        platforms: Sequence[Platform] | None,
        concurrency: int,
    ) -> None:
        self.base = mirror.rstrip("/")
        self.client = client
        self.user = user
        self.platforms = platforms
        self.concurrency = concurrency

    async def ping(self) -> Answer | None:
        """``GET /v2/``: None if no credentials are needed, else the 401."""
        try:
            answer = await self.client.get(f"{self.base}/v2/")
        except PrefetchError as e:
            raise PrefetchError(f"mirror {self.base} unreachable: {e}") from e
        if answer.status == 200:
            await answer.read(keep=None)  # discarded
            return None
        if answer.status == 401:
            await answer.small(ERROR_BODY)
            return answer
        raise PrefetchError(f"{self.base}/v2/ answered {await answer.reason()}")

    async def image(self, ref: Reference, ping: Answer | None) -> Summary:
        scope = Scope("repository", ref.repository, "pull")
        auth = RepositoryAuth(self.client, self.user, str(scope))
        if ping is not None:
            await auth.renew(ping, None)
        summary = Summary()
        body, media_type, summary.digest = await self._manifest(
            auth, ref, ref.reference
        )
        summary.manifests = 1
        blobs: dict[str, Blob] = {}
        await self._collect(auth, ref, body, media_type, summary, blobs, depth=0)
        summary.blobs = len(blobs)
        summary.bytes = sum(await self._blobs(auth, ref, list(blobs.values())))
        return summary

    async def _blobs(
        self, auth: RepositoryAuth, ref: Reference, blobs: list[Blob]
    ) -> list[int]:
        limit = defer.DeferredSemaphore(self.concurrency)
        errors: list[Exception] = []

        async def fetch(blob: Blob) -> int:
            if errors:  # a slot freed by a failure starts nothing new
                raise defer.CancelledError()
            try:
                return await self._blob(auth, ref, blob)
            except Exception as e:
                errors.append(e)
                raise

        fetches = [limit.run(fetch, blob) for blob in blobs]
        try:
            return await defer.gatherResults(fetches, consumeErrors=True)
        except defer.FirstError:
            for other in fetches:
                other.cancel()
            await defer.DeferredList(fetches, consumeErrors=True)
            raise errors[0] from None

    async def _collect(
        self,
        auth: RepositoryAuth,
        ref: Reference,
        body: bytes,
        media_type: str,
        summary: Summary,
        blobs: dict[str, Blob],
        depth: int,
    ) -> None:
        doc = as_dict(_json(body))
        if media_type in INDEX_TYPES:
            if depth > 1:
                raise PrefetchError("index nested too deeply")
            for entry in select_manifests(doc, self.platforms):
                digest = entry.get("digest")
                if not isinstance(digest, str) or not is_valid_digest(digest):
                    raise PrefetchError(f"index entry without a valid digest: {entry}")
                platform = as_dict(entry.get("platform"))
                if platform:
                    summary.platforms.append(platform_name(platform))
                child, child_type, _ = await self._manifest(auth, ref, digest)
                summary.manifests += 1
                await self._collect(
                    auth, ref, child, child_type, summary, blobs, depth + 1
                )
            return
        if media_type not in IMAGE_TYPES:
            raise PrefetchError(f"unsupported manifest type {media_type!r}")
        if depth == 0:
            summary.platforms.append("single-platform")
        for descriptor in [doc.get("config"), *as_list(doc.get("layers"))]:
            desc = as_dict(descriptor)
            digest = desc.get("digest")
            if not isinstance(digest, str) or not is_valid_digest(digest):
                raise PrefetchError(f"descriptor without a valid digest: {desc}")
            kind = str(desc.get("mediaType", ""))
            if desc.get("urls") and any(m in kind for m in _FOREIGN_MARKERS):
                summary.skipped += 1
                continue
            size = desc.get("size")
            blobs[digest] = Blob(digest, size if isinstance(size, int) else None)

    async def _get(
        self, auth: RepositoryAuth, url: str, headers: dict[str, str]
    ) -> Answer:
        """GET with the repository's credentials, renewed once on a 401."""
        for attempt in (1, 2):
            sent = auth.header
            answer = await self.client.get(
                url, {**headers, **({"Authorization": sent} if sent else {})}
            )
            if answer.status != 401 or attempt == 2:
                return answer
            with contextlib.suppress(PrefetchError):  # the challenge is a header
                await answer.small(ERROR_BODY)
            await auth.renew(answer, sent)
        raise AssertionError("unreachable")

    async def _manifest(
        self, auth: RepositoryAuth, ref: Reference, reference: str
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest, its digest verified."""
        url = f"{self.base}/v2/{ref.repository}/manifests/{reference}"
        answer = await self._get(auth, url, {"Accept": MANIFEST_ACCEPT})
        if answer.status != 200:
            raise PrefetchError(f"manifest {reference}: {await _why(answer)}")
        body = await answer.small()
        header_digest = answer.header("Docker-Content-Digest")
        content_type = (answer.header("Content-Type") or "").split(";")[0].strip()
        expected = reference if ":" in reference else header_digest
        if expected is None:
            digest = Digest.of(body)
        else:
            try:
                digest = Digest.parse(expected)
            except ValueError as e:
                raise PrefetchError(f"manifest {reference}: {e}") from None
            if not digest.matches(body):
                raise PrefetchError(
                    f"manifest {reference}: body does not match {expected}"
                )
        declared = as_dict(_json(body)).get("mediaType")
        media_type = declared if isinstance(declared, str) else content_type
        return body, media_type, str(digest)

    async def _blob(self, auth: RepositoryAuth, ref: Reference, blob: Blob) -> int:
        """GET one blob to the end, hashing it; returns its size."""
        url = f"{self.base}/v2/{ref.repository}/blobs/{blob.digest}"
        answer = await self._get(auth, url, {})
        if answer.status != 200:
            raise PrefetchError(f"blob {blob.digest}: {await _why(answer)}")
        length = answer.length
        check = Digest.parse(blob.digest).hasher()
        try:
            body = await answer.read(keep=None, update=check.update)
        except PrefetchError as e:
            raise PrefetchError(f"blob {blob.digest}: {e}") from e
        received = body.received
        if length is not None and received != length:
            raise PrefetchError(
                f"blob {blob.digest}: short read, {received} of {length} bytes"
            )
        if not body.complete:
            raise PrefetchError(
                f"blob {blob.digest}: cut off after {received} bytes ({body.why})"
            )
        if not check.matches():
            raise PrefetchError(
                f"blob {blob.digest}: the bytes do not match the digest"
            )
        if blob.size is not None and received != blob.size:
            raise PrefetchError(
                f"blob {blob.digest}: {received} bytes, the manifest says {blob.size}"
            )
        return received


async def _why(answer: Answer) -> str:
    reason = await answer.reason()
    if answer.status == 401:
        return f"{reason} (no such repository, or it needs --user)"
    return reason


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as e:
        raise PrefetchError(f"manifest is not JSON: {e}") from e
