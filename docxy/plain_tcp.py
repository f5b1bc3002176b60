"""Client connections Docxy can write to directly (sendfile, its own sends).

TLS encrypts in user space, so only plain TCP (and Unix) sockets qualify,
and only while twisted.web's channel is the transport's producer: a sender
borrows that slot for the length of a body (see
:mod:`docxy.cache.kernel_sender`, :mod:`docxy.socket_relay`).
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.web.server import Request


class KernelTransport(Protocol):
    """What the sender needs of a transport (``tcp.Connection`` has it)."""

    producer: Any
    producerPaused: bool
    disconnected: bool

    def fileno(self) -> int: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def startWriting(self) -> None: ...
    def abortConnection(self) -> None: ...


def kernel_transport(request: Request) -> KernelTransport | None:
    """The request's transport if the kernel can write to it, else None.

    Plain TCP (and Unix) sockets only, and only while the channel is the
    transport's producer as twisted.web left it: TLS encrypts in user
    space, so its bytes never come from a file.
    """
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if not isinstance(transport, tcp.Connection):
        return None
    if ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False):
        return None
    if transport.producer is not channel or transport.disconnected:
        return None
    return cast(KernelTransport, transport)


class ProducerLoan:
    """A transport's producer slot, lent by twisted.web's channel to a pull
    producer that writes to the socket itself, and given back after.

    A transport asks its pull producer for more only from ``doWrite``, when
    its buffer is empty and the socket writable: so what the channel wrote
    (the headers) goes first.
    """

    def __init__(self, transport: KernelTransport) -> None:
        self.transport = transport
        self._channel: Any = None
        self._channel_paused = False
        # Inside registerProducer, which resumes a pull producer at once.
        self.taking = False

    def take(self, producer: Any) -> None:
        transport = self.transport
        self._channel = transport.producer
        self._channel_paused = transport.producerPaused
        transport.unregisterProducer()
        self.taking = True
        try:
            transport.registerProducer(producer, False)
        finally:
            self.taking = False

    def give_back(self, producer: Any) -> None:
        """The channel gets the slot back (unless the connection is gone)."""
        transport = self.transport
        if transport.producer is producer:
            transport.unregisterProducer()
        channel, self._channel = self._channel, None
        if channel is None or transport.disconnected or transport.producer is not None:
            return
        transport.registerProducer(channel, True)
        if self._channel_paused:  # the buffer it waited for is empty now
            channel.resumeProducing()
