"""Evidence of who may have what, each piece from the upstream itself.

- a repository is public (an anonymous client may pull from it);
- a digest belongs to a repository (the upstream served it under it);
- a credential was given a digest of a repository.

Public repository + member digest = anyone may have it. Evidence younger
than ``ttl`` is served on without asking the upstream; older evidence is
kept (bounded, in the :class:`~docxy.cache.ledger.Ledger`, so across
restarts) for when the upstream cannot be asked.

A credential is known by keyed hashes only: of the ``Authorization``
header it sent, and of the principal behind it (the credential its token
was asked for with, see :class:`~docxy.cache.offline.TokenBook`), so a
client that comes back with a new token, or after a restart with an
offline token, is still the client that was allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from .ledger import Ledger
from .offline import TokenBook

ANONYMOUS = "-"


@dataclass(frozen=True)
class Who:
    """A client as the upstream sees it."""

    authorization: bytes | None  # sent upstream on its behalf
    keys: tuple[str, ...]  # its grants are kept under these


class Evidence:
    """Decides from remembered upstream answers whether a client may have a digest.

    Fresh evidence spares an upstream access check; expired evidence still
    decides when the upstream cannot be asked (down, 429).
    """

    def __init__(
        self, ledger: Ledger, book: TokenBook, clock: IReactorTime, ttl: float
    ) -> None:
        self.ledger = ledger
        self.book = book
        self.clock = clock
        self.ttl = ttl

    def who(self, request: Request) -> Who:
        authorization = request.getHeader(b"authorization")
        keys = [ANONYMOUS]
        if authorization:
            keys.append(self.ledger.keys.of("authorization", authorization))
        principal = self.book.principal_of(
            authorization, getattr(request, "own_token", None)
        )
        if principal is not None:
            keys.append(principal)
        return Who(authorization, tuple(keys))

    def granted(self, upstream: str, repo: str, digest: str, who: Who) -> None:
        """The upstream just gave this content to this client."""
        now = self.clock.seconds()
        keys = who.keys[1:] or who.keys  # a named client: not as anyone
        for key in keys:
            self.ledger.grants.put((upstream, repo, digest, key), (), now)
        self.member(upstream, repo, digest)

    def member(self, upstream: str, repo: str, digest: str) -> None:
        self.ledger.members.put((upstream, repo, digest), (), self.clock.seconds())

    def public(self, upstream: str, repo: str) -> None:
        self.ledger.public.put((upstream, repo), (), self.clock.seconds())

    def public_fresh(self, upstream: str, repo: str) -> bool:
        return self._fresh(self.ledger.public.stamp((upstream, repo)))

    def fresh(self, upstream: str, repo: str, digest: str, who: Who) -> bool:
        """Allowed within ``ttl``: served without asking the upstream."""
        if any(
            self._fresh(self.ledger.grants.stamp((upstream, repo, digest, key)))
            for key in who.keys
        ):
            return True
        return self._is_member(upstream, repo, digest) and self.public_fresh(
            upstream, repo
        )

    def remembered(self, upstream: str, repo: str, digest: str, who: Who) -> bool:
        """Was this ever allowed (public, or this client), however long ago?"""
        grants = self.ledger.grants
        if any(grants.get((upstream, repo, digest, key)) for key in who.keys):
            return True
        return (
            self._is_member(upstream, repo, digest)
            and self.ledger.public.get((upstream, repo)) is not None
        )

    def _is_member(self, upstream: str, repo: str, digest: str) -> bool:
        return self.ledger.members.get((upstream, repo, digest)) is not None

    def _fresh(self, stamp: float | None) -> bool:
        return stamp is not None and stamp + self.ttl >= self.clock.seconds()
