"""An upstream that fails on demand, token service included.

The real registry and token service, each behind a :class:`GatedRelay`;
the registry's challenges name the token relay, so everything Docxy asks
for (``/v2/``, tokens, manifests, blobs, access checks) crosses a relay
and both can be switched together: stopped, rate-limited (429 with
``Retry-After`` on every path, as Docker Hub's abuse limit), or well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import ImageInfo, ImageSpec, populate
from .registry import ISSUER, SERVICE, Registry, Upstream
from .relay import GatedRelay
from .token_service import TOKEN_PATH, TokenService


@dataclass
class FaultyUpstream:
    """``url`` is what Docxy is given; ``real`` the processes behind it."""

    real: Upstream
    registry_relay: GatedRelay
    token_relay: GatedRelay

    @property
    def url(self) -> str:
        return self.registry_relay.url

    @property
    def images(self) -> dict[str, ImageInfo]:
        return self.real.images

    def requests(self) -> list[tuple[str, str]]:
        """What reached the real registry (not what the relay answered itself)."""
        return self.real.requests()

    def limited(self) -> list[tuple[str, str]]:
        """Requests answered 429 by either relay, in order per relay."""
        return [*self.registry_relay.limited, *self.token_relay.limited]

    def rate_limit(self, retry_after: int = 3600) -> None:
        for relay in (self.token_relay, self.registry_relay):
            relay.rate_limit(retry_after)

    def go_down(self) -> None:
        for relay in (self.token_relay, self.registry_relay):
            relay.go_down()

    def recover(self) -> None:
        for relay in (self.token_relay, self.registry_relay):
            relay.recover()

    def stop(self) -> None:
        for relay in (self.registry_relay, self.token_relay):
            relay.close()
        self.real.stop()


def start_faulty_upstream(
    workdir: Path, specs: list[ImageSpec], **_: Any
) -> FaultyUpstream:
    """Token service, registry, their relays; ``specs`` pushed (directly)."""
    repositories = sorted({spec.repo for spec in specs})
    token = TokenService(workdir / "token", SERVICE, ISSUER, repositories=repositories)
    token_relay = GatedRelay(token.port)
    registry: Registry | None = None
    try:
        registry = Registry(
            workdir / "registry",
            workdir / "storage",
            token,
            realm=token_relay.url + TOKEN_PATH,
        )
        registry_relay = GatedRelay(registry.port)
    except BaseException:
        token_relay.close()
        if registry is not None:
            registry.stop()
        token.stop()
        raise
    faulty = FaultyUpstream(Upstream(token, registry), registry_relay, token_relay)
    try:
        faulty.real.images = populate(faulty.real, workdir / "images", specs)
    except BaseException:
        faulty.stop()
        raise
    return faulty
