"""TLS for the listener: one SSL.Context per name, chosen by SNI, swappable live.

Twisted's ``tls:`` endpoint and ``CertificateOptions(contextForServerName=)``
fix their certificates when they start; Docxy must put a renewed certificate
into a running listener. So the listener asks this object for each new
connection, and a swap replaces the whole (immutable) name -> context map:
handshakes after the swap get the new certificate, connections already up
keep theirs and finish undisturbed.

ALPN offers HTTP/1.1 only (HTTP/2 measured 3x slower in twisted.web), plus
``acme-tls/1`` for a name with a pending TLS-ALPN-01 challenge, answered
with that challenge's certificate (RFC 8737).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

from .certs import KeyAndChain

ALPN_HTTP11 = b"http/1.1"
ALPN_ACME = b"acme-tls/1"

log = Logger(namespace="docxy.acme")


def server_context(pair: KeyAndChain) -> SSL.Context:
    """Twisted's vetted defaults (TLS 1.2 minimum, its cipher list, the
    server's cipher preference, no compression, no session tickets) with
    this certificate."""
    context = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2).getContext()
    context.use_certificate(pair.leaf)
    context.use_privatekey(pair.key)
    for cert in pair.chain[1:]:
        context.add_extra_chain_cert(cert)
    context.check_privatekey()
    return context


@implementer(IOpenSSLServerConnectionCreator)
class SniContexts:
    """Contexts by SNI name; unknown or absent names get the first name's."""

    def __init__(
        self,
        names: Sequence[str],
        initial: KeyAndChain,
        published: Callable[[str], KeyAndChain | None] | None = None,
    ) -> None:
        """``published(name)``: a pending challenge another process set
        (a worker's, see :mod:`docxy.tls.shared`), looked up as it arrives."""
        if not names:
            raise ValueError("at least one name")
        self.default_name = names[0]
        self._published = published
        self._contexts: Mapping[str, SSL.Context] = {}
        self._challenges: Mapping[str, KeyAndChain] = {}
        self._serials: Mapping[str, int] = {}
        for name in names:
            self.install(name, initial)

    def install(self, name: str, pair: KeyAndChain) -> None:
        """Serve ``pair`` for ``name`` from the next handshake on."""
        context = server_context(pair)
        context.set_tlsext_servername_callback(self._on_servername)
        context.set_alpn_select_callback(self._on_alpn)
        self._contexts = {**self._contexts, name: context}
        self._serials = {**self._serials, name: pair.serial}

    def serial(self, name: str) -> int:
        """The serial now served for ``name``."""
        return self._serials[name]

    def set_challenge(self, name: str, pair: KeyAndChain) -> None:
        self._challenges = {**self._challenges, name: pair}

    def clear_challenge(self, name: str) -> None:
        self._challenges = {k: v for k, v in self._challenges.items() if k != name}

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self._contexts[self.default_name], None)

    @staticmethod
    def _name(connection: SSL.Connection) -> str | None:
        raw = connection.get_servername()
        return raw.decode("ascii", "replace").lower().rstrip(".") if raw else None

    def _on_servername(self, connection: SSL.Connection) -> None:
        name = self._name(connection)
        context = self._contexts.get(name) if name else None
        if context is not None and context is not connection.get_context():
            connection.set_context(context)

    def _on_alpn(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        if ALPN_ACME in offered:
            name = self._name(connection)
            challenge = self._challenges.get(name) if name else None
            if challenge is None and name and self._published is not None:
                challenge = self._published(name)
            if challenge is None:
                log.warn(
                    "acme-tls/1 handshake for {name} with no pending challenge",
                    name=name,
                )
                return SSL.NO_OVERLAPPING_PROTOCOLS
            log.info("answering a TLS-ALPN-01 challenge for {name}", name=name)
            connection.use_certificate(challenge.leaf)
            connection.use_privatekey(challenge.key)
            return ALPN_ACME
        if ALPN_HTTP11 in offered:
            return ALPN_HTTP11
        return SSL.NO_OVERLAPPING_PROTOCOLS
