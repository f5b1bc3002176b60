"""The registry vocabulary, written once: digests, names, scopes and limits.

Everything that speaks about content addresses (a blob file's path, a body
checked against the digest it was asked for), repository names and tags,
token scopes (``repository:<name>:<actions>``) and the limits Docxy shares
with the distribution spec is defined here, so every module means the same
thing by the same word.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__

USER_AGENT = f"docxy/{__version__}".encode("ascii")
# The distribution spec's (and containerd's) manifest size limit.
MAX_MANIFEST = 4 * 1024 * 1024
# Redirect hops followed for one upstream request.
MAX_REDIRECTS = 5
MAX_NAME_LENGTH = 255
# A token request: its longest scope (a 255-character name, its type and
# actions fit well within), and how many scopes it may ask for at once (a
# pull asks for one, a push with cross-repository mounts for a few).
MAX_SCOPE_LENGTH = 512
MAX_TOKEN_SCOPES = 32

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# A repository name: components separated by ``/`` (distribution grammar).
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[a-f0-9]+")
# distribution's spec/auth/scope.md: ``type[(class)]``, actions ``[a-z*]``.
_SCOPE_TYPE_RE = re.compile(r"([a-z0-9]+)(?:\([a-z0-9]+\))?")
_ACTIONS_RE = re.compile(r"[a-z*]+(?:,[a-z*]+)*")


def is_valid_name(name: str) -> bool:
    """A repository name by the distribution grammar, at most 255 characters."""
    return len(name) <= MAX_NAME_LENGTH and REPOSITORY_RE.fullmatch(name) is not None


def is_valid_digest(digest: str) -> bool:
    """A digest Docxy can verify: sha256 or sha512 with a hex of the right size."""
    if DIGEST_RE.fullmatch(digest) is None:
        return False
    algorithm, _, hexpart = digest.partition(":")
    expected = _HEX_LENGTHS.get(algorithm)
    return (
        expected is not None
        and len(hexpart) == expected
        and _HEX_RE.fullmatch(hexpart) is not None
    )


@dataclass(frozen=True)
class Digest:
    """A content address: ``<algorithm>:<hex>``, over exact bytes.

    Parsed once (and validated) so that the path layout on disk and the
    hash that checks a body cannot disagree with what was asked for.
    """

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not is_valid_digest(text):
            raise ValueError(f"not a digest Docxy can verify: {text!r}")
        algorithm, _, hexpart = text.partition(":")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of exact bytes (a body that came without one)."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def path(self, root: Path) -> Path:
        """``<root>/<algorithm>/<first two hex>/<hex>``: the on-disk layout."""
        return root / self.algorithm / self.hex[:2] / self.hex

    def hasher(self) -> DigestHasher:
        return DigestHasher(self)

    def matches(self, data: bytes) -> bool:
        return Digest.of(data, self.algorithm) == self

    def matches_file(self, path: str | Path | int) -> bool:
        """Hash a whole file, named or open (blocking: off the reactor thread)."""
        hasher = self.hasher()
        with open(path, "rb", closefd=not isinstance(path, int)) as f:
            f.seek(0)
            while chunk := f.read(1024 * 1024):
                hasher.update(chunk)
        return hasher.matches()


class DigestHasher:
    """Incremental hash of a body, to be checked against its digest at the end."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self._hash = hashlib.new(digest.algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def matches(self) -> bool:
        return self._hash.hexdigest() == self.digest.hex


@dataclass(frozen=True)
class Scope:
    """One token scope, ``<type>:<name>:<actions>`` (``repository:a/b:pull``).

    A name never contains ``:``, the actions may be empty; text without the
    second ``:`` parses with an empty name (which no valid name matches).
    """

    kind: str
    name: str
    actions: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        return cls(kind, name, actions)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}:{self.actions}"

    @property
    def repository(self) -> bool:
        return self.kind == "repository"

    @property
    def resource_type(self) -> str:
        """The type without its class: ``repository(plugin)`` is a repository.

        (Classes are deprecated; distribution treats both as one.)
        """
        return self.kind.partition("(")[0]

    def renamed(self, name: str) -> str:
        """This scope for another name, as text."""
        return str(Scope(self.kind, name, self.actions))


def pull_scope(name: str) -> str:
    """The scope that pulls repository ``name``: ``repository:<name>:pull``."""
    return str(Scope("repository", name, "pull"))


def scope_problem(text: str) -> str | None:
    """What is wrong with the shape of one scope a client asks for, or None.

    The distribution grammar, narrowed to what a mirror serves: a
    ``repository`` (of any class) or ``registry:catalog``, one action at
    least. Whether a repository's name is valid is :func:`is_valid_name`'s.
    """
    if len(text) > MAX_SCOPE_LENGTH:
        return f"a scope is at most {MAX_SCOPE_LENGTH} characters"
    if text.count(":") < 2:
        return "a scope is <type>:<name>:<actions>"
    scope = Scope.parse(text)
    if _SCOPE_TYPE_RE.fullmatch(scope.kind) is None:
        return "a scope's type is lower-case letters and digits"
    if _ACTIONS_RE.fullmatch(scope.actions) is None:
        return "a scope names its actions, comma-separated (pull)"
    if scope.resource_type == "repository":
        return None
    if scope.resource_type == "registry" and scope.name == "catalog":
        return None
    return "this mirror serves repository and registry:catalog scopes only"


def split_scopes(value: str) -> list[str]:
    """The scopes of one ``scope`` parameter (space-separated), empty ones left out.

    An empty ``scope=`` asks for nothing (some clients send one).
    """
    return [part for part in value.split(" ") if part]


def map_scopes(value: str, one: Callable[[str], str]) -> str:
    """Apply ``one`` to each scope of a space-separated scope parameter."""
    return " ".join(one(part) for part in value.split(" "))


def b64url(data: bytes) -> str:
    """Unpadded base64url (JOSE, ACME renewal-info certificate IDs, tokens)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url; raises ``binascii.Error`` if malformed."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
