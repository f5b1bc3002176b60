"""``acme:`` ports with ``--workers N``: the supervisor orders, the workers serve.

The certificate manager (:mod:`docxy.tls.manager`) runs once, in the
supervisor, which holds the port's socket; the workers accept on it and
terminate TLS. They share what they need through the state directory:

- the certificates, which the manager already stores there
  (``<ca>/<name>.pem``, written atomically): each worker serves what is
  stored (the placeholder until a first issue) and looks again every
  :data:`FOLLOW_INTERVAL` seconds, so a renewal reaches every worker that
  long after it is stored (the old certificate is still valid then);
- the pending challenges, which the manager publishes under
  ``challenges/`` before it asks the CA to validate (an HTTP-01 token's key
  authorization, a TLS-ALPN-01 certificate): whichever worker the CA's
  connection lands on reads the file as the challenge arrives, a rare event
  and a small file.

With one process the manager serves its own challenges from memory; it
publishes them all the same, and clears what a killed run left at start.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import wrapServerTLS
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from .certs import KeyAndChain, placeholder
from .contexts import SniContexts
from .http01 import HTTP01, Http01Store
from .ports import PortWithKeeper
from .spec import AcmeSpec
from .store import AcmeStore, atomic_write

log = Logger(namespace="docxy.acme")

# Seconds between a worker's looks at the stored certificates.
FOLLOW_INTERVAL = 2.0


class PublishedChallenges:
    """Pending challenges as files in the state directory, for the workers."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "challenges"

    def clear(self) -> None:
        """At the manager's start: nothing is pending, whatever a killed run
        left behind. The directory itself is made at the first publish, by
        the user Docxy runs as then (after twistd's ``--uid``)."""
        try:
            leftovers = list(self.path.iterdir())
        except OSError:
            return
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink()

    def _write(self, path: Path, data: bytes) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, data)

    def _file(self, kind: str, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a challenge name: {name!r}")
        return self.path / f"{name}.{kind}"

    def add_token(self, token: str, key_authorization: str) -> None:
        self._write(self._file("http-01", token), key_authorization.encode("ascii"))

    def add_alpn(self, name: str, pair: KeyAndChain) -> None:
        self._write(self._file("tls-alpn-01", name), pair.to_pem())

    def remove_token(self, token: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file("http-01", token).unlink()

    def remove_alpn(self, name: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file("tls-alpn-01", name).unlink()

    def token(self, token: str) -> bytes | None:
        try:
            return self._file("http-01", token).read_bytes()
        except (OSError, ValueError):
            return None

    def alpn(self, name: str) -> KeyAndChain | None:
        try:
            return KeyAndChain.from_pem(self._file("tls-alpn-01", name).read_bytes())
        except (OSError, ValueError):
            return None


class CertificateFollower:
    """A worker's view of the certificates the supervisor's manager keeps."""

    def __init__(
        self,
        reactor: Any,
        spec: AcmeSpec,
        http01: Http01Store = HTTP01,
        interval: float = FOLLOW_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.spec = spec
        self.store = AcmeStore(spec.state_dir, spec.directory)
        self.published = PublishedChallenges(spec.state_dir)
        self.contexts = SniContexts(
            spec.domains, placeholder(spec.domains), self.published.alpn
        )
        http01.follow(self.published.token)
        self._seen: dict[str, tuple[int, int, int] | None] = {}
        self._loop = task.LoopingCall(self.look)
        self._loop.clock = reactor
        self.interval = interval

    def _stamp(self, name: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.store.cert_path(name))
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def look(self) -> None:
        """Serve each certificate stored since the last look. A file that
        cannot be read now is tried again at the next look; nothing here
        stops the looking."""
        for name in self.spec.domains:
            stamp = self._stamp(name)
            if stamp is None or stamp == self._seen.get(name):
                continue
            try:
                stored = self.store.load(name)
                serving = self.contexts.serial(name)
                if stored is not None and stored.serial != serving:
                    self.contexts.install(name, stored)
                    log.info(
                        "serving the certificate the supervisor stored for "
                        "{name} (serial {serial:x})",
                        name=name,
                        serial=stored.serial,
                    )
            except Exception as e:
                log.warn(
                    "cannot serve the stored certificate for {name} yet: "
                    "{error}; trying again in {interval:g}s",
                    name=name,
                    error=e,
                    interval=self.interval,
                )
                continue
            self._seen[name] = stamp

    def start(self) -> None:
        if not self._loop.running:
            done = self._loop.start(self.interval, now=True)
            done.addErrback(lambda f: log.failure("certificate follower stopped", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


@implementer(IStreamServerEndpoint)
class FollowerEndpoint:
    """A worker's ``acme:`` port: TLS on the inherited socket with the
    certificates the supervisor keeps."""

    def __init__(
        self, reactor: Any, spec: AcmeSpec, wrapped: IStreamServerEndpoint
    ) -> None:
        self.follower = CertificateFollower(reactor, spec)
        self.wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        follower = self.follower
        listening = wrapServerTLS(follower.contexts, self.wrapped).listen(factory)

        def started(port: IListeningPort) -> IListeningPort:
            follower.start()
            return PortWithKeeper(port, follower.stop)

        return listening.addCallback(started)
