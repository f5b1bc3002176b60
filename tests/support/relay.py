"""A TCP relay in front of an upstream whose answers can be held mid-body.

Why: a cache fill runs at the upstream's pace, not the client's, so on
loopback a 200 MiB blob is cached before a test can act "during the fill".
Put this relay between Docxy and the registry, ``hold_after(n)``, and every
connection stops relaying the upstream's bytes once it has passed on ``n``
more of them (the upstream itself is then held back by TCP flow control),
until ``release()``. A test can then observe or kill Docxy while a fill is
certainly in flight. Client-to-upstream bytes always flow.

Threads, not a process: the relay lives exactly as long as the test that
started it (``close()``), and holds nothing but sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from .processes import LOOPBACK

_RECV = 64 * 1024


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket
    passed: int = 0  # upstream bytes passed on since the last hold_after()
    closed: bool = False
    threads: list[threading.Thread] = field(default_factory=list)


class GatedRelay:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._cond = threading.Condition()
        self._limit: int | None = None
        self._held = 0
        self._links: list[_Link] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    # --- control -----------------------------------------------------------

    def hold_after(self, limit: int) -> None:
        """From now on, hold each connection after it passed ``limit`` bytes."""
        with self._cond:
            self._limit = limit
            for link in self._links:
                link.passed = 0

    def release(self) -> None:
        """Let every held connection go on, and stop holding."""
        with self._cond:
            self._limit = None
            self._cond.notify_all()

    def held(self) -> int:
        """How many connections are waiting at the gate right now."""
        with self._cond:
            return self._held

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._limit = None
            links = list(self._links)
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in links:
            self._drop(link)
        self._acceptor.join(5)
        for link in links:
            for thread in link.threads:
                thread.join(5)

    # --- relaying ------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._cond:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._links.append(link)
            for target in (self._upward, self._downward):
                thread = threading.Thread(target=target, args=(link,), daemon=True)
                link.threads.append(thread)
                thread.start()

    def _upward(self, link: _Link) -> None:
        """Client to upstream: never held."""
        try:
            while data := link.client.recv(_RECV):
                link.server.sendall(data)
        except OSError:
            pass
        self._drop(link)

    def _downward(self, link: _Link) -> None:
        """Upstream to client: held at the gate once past the limit."""
        try:
            while data := link.server.recv(_RECV):
                with self._cond:
                    if self._over(link):
                        self._held += 1
                        while self._over(link):
                            self._cond.wait()
                        self._held -= 1
                    if link.closed:
                        break
                    link.passed += len(data)
                link.client.sendall(data)
        except OSError:
            pass
        self._drop(link)

    def _over(self, link: _Link) -> bool:
        return (
            self._limit is not None
            and link.passed >= self._limit
            and not link.closed
            and not self._closed
        )

    def _drop(self, link: _Link) -> None:
        """Close both ends (either side leaving ends the relayed connection)."""
        with self._cond:
            link.closed = True
            self._cond.notify_all()
        for sock in (link.client, link.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
