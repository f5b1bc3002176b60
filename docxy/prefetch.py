"""``docxy-prefetch``: warm a running Docxy's cache for a list of images.

For preparing a mirror before a rollout or an upstream outage::

    docxy-prefetch --mirror http://127.0.0.1:5000 alpine:3.20 ghcr.io/owner/img:1

It talks to Docxy over HTTP exactly as a client does: ``GET /v2/``, a token
from the realm of the challenge, the manifest with the full ``Accept`` set,
the chosen platforms of an index, then every blob ``GET`` read to the end
(hashed, verified and discarded). So the cache fills through the normal
path, with the same authorization checks as any pull. Blobs of one image
are fetched a few at a time (``--concurrency``). One summary line per
image on stdout; one line per failed image on stderr, and exit status 1.

An image named with a registry host (``ghcr.io/owner/img``) is asked for
under Docxy's path alias for it (``/v2/ghcr.io/owner/img/...``): the host
must be an alias of one of Docxy's upstreams (every preset's is). An image
without a host (``alpine``, ``owner/img``) goes to ``/v2/<name>/...``, so
Docxy's routing (default upstream, or a multi-component alias at the start
of the name) decides. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin, urlsplit

from .challenge import parse_challenges
from .names import TAG_RE, is_valid_digest, is_valid_name

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_CONCURRENCY = 4
MAX_MANIFEST = 4 * 1024 * 1024  # containerd's limit too
CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "docxy-prefetch"
USER_ENV = "DOCXY_PREFETCH_USER"
# Docker Hub's other names; Docxy's alias for it is docker.io.
_HUB_HOSTS = frozenset({"index.docker.io", "registry-1.docker.io"})


class PrefetchError(Exception):
    """Why one image could not be prefetched (one line)."""


# --------------------------------------------------------------------------
# Image references and platforms
# --------------------------------------------------------------------------


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
    entries = [e for e in _list(index.get("manifests")) if isinstance(e, dict)]
    if platforms is None:
        return entries
    chosen = [
        e
        for e in entries
        if any(p.matches(_dict(e.get("platform"))) for p in platforms)
    ]
    if not chosen:
        have = sorted({_platform_name(_dict(e.get("platform"))) for e in entries})
        wanted = ", ".join(str(p) for p in platforms)
        raise PrefetchError(
            f"no manifest for {wanted} in the index (it has: {', '.join(have)})"
        )
    return chosen


def _platform_name(platform: dict[str, object]) -> str:
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p) or "?"


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------
# HTTP, as a registry client does it
# --------------------------------------------------------------------------


@dataclass
class Answer:
    """An open response: read ``body()`` or ``chunks()``, then ``close()``."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def chunks(self) -> Iterator[bytes]:
        while data := self.response.read(CHUNK):
            yield data

    def body(self, limit: int = MAX_MANIFEST) -> bytes:
        data = self.response.read(limit + 1)
        if len(data) > limit:
            raise PrefetchError(f"response larger than {limit} bytes")
        return data

    def close(self) -> None:
        self.connection.close()

    def reason(self) -> str:
        """``404 MANIFEST_UNKNOWN: manifest unknown`` from an error envelope."""
        text = f"{self.status} {self.response.reason}".strip()
        try:
            first = json.loads(self.body(64 * 1024))["errors"][0]
            return f"{self.status} {first['code']}: {first['message']}"
        except (ValueError, LookupError, TypeError, PrefetchError, OSError):
            return text
        except http.client.HTTPException:
            return text


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(user.encode()).decode()


class Client:
    """Requests to the mirror (and its token realm), redirects followed."""

    def __init__(self, timeout: float, ca_file: str | None) -> None:
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca_file)

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Answer:
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            answer = self._once(method, url, headers)
            location = answer.header("Location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            answer.close()
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                # Credentials stay with the host they were meant for.
                headers.pop("Authorization", None)
            url = target
        raise PrefetchError(f"more than {MAX_REDIRECTS} redirects for {url}")

    def _once(self, method: str, url: str, headers: dict[str, str]) -> Answer:
        parts = urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout, context=self.context
            )
        elif parts.scheme == "http":
            connection = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        else:
            raise PrefetchError(f"not an http(s) URL: {url}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request(method, target, headers=headers)
            return Answer(connection, connection.getresponse())
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise PrefetchError(f"{parts.netloc}: {e}") from e


class Auth:
    """The ``Authorization`` for one repository, renewed on a 401 challenge."""

    def __init__(
        self, client: Client, user: str | None, scope: str, ping: Answer | None
    ) -> None:
        self.client = client
        self.user = user
        self.scope = scope
        self.header: str | None = None
        self._lock = threading.Lock()
        if ping is not None:
            self.renew(ping, None)

    def renew(self, answer: Answer, failed: str | None) -> None:
        """Get credentials for a 401 ``answer`` to a request sent with ``failed``."""
        with self._lock:
            if self.header != failed:
                return  # another thread renewed them meanwhile
            self.header = self._credentials(answer)

    def _credentials(self, answer: Answer) -> str:
        challenges = []
        for value in answer.response.headers.get_all("WWW-Authenticate") or []:
            try:
                challenges += parse_challenges(value)
            except ValueError:
                continue
        for challenge in challenges:
            realm = challenge.get("realm")
            if challenge.scheme.lower() == "bearer" and realm:
                return self._token(
                    realm, challenge.get("service"), challenge.get("scope")
                )
        if self.user and any(c.scheme.lower() == "basic" for c in challenges):
            return _basic(self.user)
        raise PrefetchError(f"unauthorized ({answer.reason()})")

    def _token(self, realm: str, service: str | None, scope: str | None) -> str:
        params = [("scope", self.scope)]
        if scope and scope != self.scope:
            params.append(("scope", scope))
        if service:
            params.insert(0, ("service", service))
        headers = {"Authorization": _basic(self.user)} if self.user else {}
        separator = "&" if urlsplit(realm).query else "?"
        answer = self.client.request(
            "GET", realm + separator + urlencode(params), headers
        )
        try:
            if answer.status != 200:
                raise PrefetchError(f"token request refused: {answer.reason()}")
            try:
                doc = json.loads(answer.body())
                token = doc.get("token") or doc.get("access_token")
            except (ValueError, AttributeError):
                token = None
            if not isinstance(token, str) or not token:
                raise PrefetchError("token realm answered without a token")
            return f"Bearer {token}"
        finally:
            answer.close()


# --------------------------------------------------------------------------
# Prefetching one image
# --------------------------------------------------------------------------


@dataclass
class Summary:
    digest: str = ""
    platforms: list[str] = field(default_factory=list)
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    skipped: int = 0  # foreign / non-distributable layers, never in a registry


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int | None


_FOREIGN_MARKERS = ("foreign", "nondistributable")


class Prefetcher:
    def __init__(
        self,
        mirror: str,
        client: Client,
        user: str | None,
        platforms: Sequence[Platform] | None,
        concurrency: int,
    ) -> None:
        self.base = mirror.rstrip("/")
        self.client = client
        self.user = user
        self.platforms = platforms
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def ping(self) -> Answer | None:
        """``GET /v2/``: None if no credentials are needed, else the 401."""
        try:
            answer = self.client.request("GET", f"{self.base}/v2/")
        except PrefetchError as e:
            raise PrefetchError(f"mirror {self.base} unreachable: {e}") from e
        try:
            if answer.status == 200:
                return None
            if answer.status == 401:
                answer.body(64 * 1024)
                return answer
            raise PrefetchError(f"{self.base}/v2/ answered {answer.reason()}")
        finally:
            answer.close()

    def image(self, ref: Reference, ping: Answer | None) -> Summary:
        auth = Auth(self.client, self.user, f"repository:{ref.repository}:pull", ping)
        summary = Summary()
        body, media_type, summary.digest = self._manifest(auth, ref, ref.reference)
        summary.manifests = 1
        blobs: dict[str, Blob] = {}
        self._collect(auth, ref, body, media_type, summary, blobs, depth=0)
        summary.blobs = len(blobs)
        futures = [
            self.pool.submit(self._blob, auth, ref, blob) for blob in blobs.values()
        ]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled():
                summary.bytes += future.result()  # raises the first failure
        return summary

    def _collect(
        self,
        auth: Auth,
        ref: Reference,
        body: bytes,
        media_type: str,
        summary: Summary,
        blobs: dict[str, Blob],
        depth: int,
    ) -> None:
        doc = _dict(_json(body))
        if media_type in INDEX_TYPES:
            if depth > 1:
                raise PrefetchError("index nested too deeply")
            for entry in select_manifests(doc, self.platforms):
                digest = entry.get("digest")
                if not isinstance(digest, str) or not is_valid_digest(digest):
                    raise PrefetchError(f"index entry without a valid digest: {entry}")
                platform = _dict(entry.get("platform"))
                if platform:
                    summary.platforms.append(_platform_name(platform))
                child, child_type, _ = self._manifest(auth, ref, digest)
                summary.manifests += 1
                self._collect(auth, ref, child, child_type, summary, blobs, depth + 1)
            return
        if media_type not in IMAGE_TYPES:
            raise PrefetchError(f"unsupported manifest type {media_type!r}")
        if depth == 0:
            summary.platforms.append("single-platform")
        for descriptor in [doc.get("config"), *_list(doc.get("layers"))]:
            desc = _dict(descriptor)
            digest = desc.get("digest")
            if not isinstance(digest, str) or not is_valid_digest(digest):
                raise PrefetchError(f"descriptor without a valid digest: {desc}")
            kind = str(desc.get("mediaType", ""))
            if desc.get("urls") and any(m in kind for m in _FOREIGN_MARKERS):
                summary.skipped += 1
                continue
            size = desc.get("size")
            blobs[digest] = Blob(digest, size if isinstance(size, int) else None)

    def _get(self, auth: Auth, url: str, headers: dict[str, str]) -> Answer:
        """GET with the repository's credentials, renewed once on a 401."""
        for attempt in (1, 2):
            sent = auth.header
            answer = self.client.request(
                "GET", url, {**headers, **({"Authorization": sent} if sent else {})}
            )
            if answer.status != 401 or attempt == 2:
                return answer
            try:
                answer.body(64 * 1024)
                auth.renew(answer, sent)
            finally:
                answer.close()
        raise AssertionError("unreachable")

    def _manifest(
        self, auth: Auth, ref: Reference, reference: str
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest, its digest verified."""
        url = f"{self.base}/v2/{ref.repository}/manifests/{reference}"
        answer = self._get(auth, url, {"Accept": MANIFEST_ACCEPT})
        try:
            if answer.status != 200:
                raise PrefetchError(f"manifest {reference}: {_why(answer)}")
            body = answer.body()
            header_digest = answer.header("Docker-Content-Digest")
            content_type = (answer.header("Content-Type") or "").split(";")[0].strip()
        finally:
            answer.close()
        expected = reference if ":" in reference else header_digest
        digest = _digest_of(body, expected or "sha256:")
        if expected and digest != expected:
            raise PrefetchError(f"manifest {reference}: body does not match {expected}")
        declared = _dict(_json(body)).get("mediaType")
        media_type = declared if isinstance(declared, str) else content_type
        return body, media_type, digest

    def _blob(self, auth: Auth, ref: Reference, blob: Blob) -> int:
        """GET one blob to the end, hashing it; returns its size."""
        url = f"{self.base}/v2/{ref.repository}/blobs/{blob.digest}"
        answer = self._get(auth, url, {})
        try:
            if answer.status != 200:
                raise PrefetchError(f"blob {blob.digest}: {_why(answer)}")
            length = answer.header("Content-Length")
            algorithm, _, expected = blob.digest.partition(":")
            h = hashlib.new(algorithm)
            received = 0
            try:
                for data in answer.chunks():
                    h.update(data)
                    received += len(data)
            except (OSError, http.client.HTTPException) as e:
                raise PrefetchError(
                    f"blob {blob.digest}: cut off after {received} bytes ({e})"
                ) from e
        finally:
            answer.close()
        if length is not None and length.isdigit() and received != int(length):
            raise PrefetchError(
                f"blob {blob.digest}: short read, {received} of {length} bytes"
            )
        if h.hexdigest() != expected:
            raise PrefetchError(
                f"blob {blob.digest}: the bytes do not match the digest"
            )
        if blob.size is not None and received != blob.size:
            raise PrefetchError(
                f"blob {blob.digest}: {received} bytes, the manifest says {blob.size}"
            )
        return received


def _why(answer: Answer) -> str:
    reason = answer.reason()
    if answer.status == 401:
        return f"{reason} (no such repository, or it needs --user)"
    return reason


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as e:
        raise PrefetchError(f"manifest is not JSON: {e}") from e


def _digest_of(body: bytes, like: str) -> str:
    algorithm = like.partition(":")[0] or "sha256"
    if algorithm not in ("sha256", "sha512"):
        algorithm = "sha256"
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docxy-prefetch",
        description="Warm a running Docxy's cache for a list of images "
        "(pulls them through Docxy like a client, discarding the bytes).",
    )
    parser.add_argument(
        "--mirror", required=True, help="Docxy's URL, e.g. http://127.0.0.1:5000"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--platform",
        action="append",
        metavar="OS/ARCH[/VARIANT]",
        help=f"platform to fetch from multi-platform images; repeatable "
        f"(default {DEFAULT_PLATFORM}; without a variant, every variant)",
    )
    which.add_argument(
        "--all-platforms",
        action="store_true",
        help="fetch every manifest of multi-platform images",
    )
    parser.add_argument(
        "--user",
        metavar="USER:PASSWORD",
        default=os.environ.get(USER_ENV) or None,
        help=f"credentials for the token realm (default: ${USER_ENV}, which "
        "keeps them out of ps)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"blobs fetched at a time (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a connection may stay silent (default 60)",
    )
    parser.add_argument("--ca-file", help="CA bundle for an https mirror")
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="alpine:3.20, library/alpine@sha256:..., ghcr.io/owner/img:1",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if urlsplit(args.mirror).scheme not in ("http", "https"):
        parser.error(f"--mirror {args.mirror!r}: expected http:// or https://")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.user is not None and ":" not in args.user:
        parser.error("--user: expected USER:PASSWORD")
    try:
        platforms = (
            None
            if args.all_platforms
            else [parse_platform(p) for p in args.platform or [DEFAULT_PLATFORM]]
        )
    except ValueError as e:
        parser.error(f"--platform {e}")
    prefetcher = Prefetcher(
        args.mirror,
        Client(args.timeout, args.ca_file),
        args.user,
        platforms,
        args.concurrency,
    )
    failed = 0
    try:
        ping: Answer | None = None
        ping_error: str | None = None
        try:
            ping = prefetcher.ping()
        except PrefetchError as e:
            ping_error = str(e)
        for text in args.images:
            started = time.monotonic()
            try:
                ref = parse_reference(text)
                if ping_error is not None:
                    raise PrefetchError(ping_error)
                summary = prefetcher.image(ref, ping)
            except (PrefetchError, ValueError) as e:
                failed += 1
                print(f"docxy-prefetch: {text}: {e}", file=sys.stderr, flush=True)
                continue
            skipped = f" foreign={summary.skipped}" if summary.skipped else ""
            print(
                f"{text}: {summary.digest} {','.join(summary.platforms)} "
                f"manifests={summary.manifests} blobs={summary.blobs}{skipped} "
                f"bytes={summary.bytes} ({_size(summary.bytes)}) "
                f"{time.monotonic() - started:.1f}s",
                flush=True,
            )
    finally:
        prefetcher.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
