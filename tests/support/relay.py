"""A TCP relay in front of an upstream whose answers can be held mid-body.

Why: a cache fill runs at the upstream's pace, not the client's, so on
loopback a 200 MiB blob is cached before a test can act "during the fill".
Put this relay between Docxy and the registry, ``hold_after(n)``, and every
connection stops relaying the upstream's bytes once it has passed on ``n``
more of them (the upstream itself is then held back by TCP flow control),
until ``release()``. A test can then observe or kill Docxy while a fill is
certainly in flight. ``hold_answers(matches)`` holds, before its first
byte, the answer to each request ``matches(method, target)`` picks, until
``release_answers()``: Docxy's upstream request is then certainly in
flight while the test sends other clients. Client-to-upstream bytes always
flow.

Faults on demand, for the upstream outages a mirror must ride out:
``rate_limit()`` answers every request itself with Docker Hub's abuse-limit
429 (``Retry-After``, the envelope), ``go_down()`` refuses connections as a
stopped upstream does, ``recover()`` relays again. Each switch drops the
open connections, so pooled upstream connections see the new behaviour.

Threads, not a process: the relay lives exactly as long as the test that
started it (``close()``), and holds nothing but sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .processes import LOOPBACK

_RECV = 64 * 1024
RATE_LIMIT_BODY = (
    b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your '
    b'pull rate limit.","detail":null}]}'
)


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket
    passed: int = 0  # upstream bytes passed on since the last hold_after()
    closed: bool = False
    answer_held: bool = False  # the current request's answer waits
    requests: bytes = b""  # request bytes not yet parsed (hold_answers)
    body_left: int = 0  # request body bytes still to skip
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
        self._matches: Callable[[str, str], bool] | None = None
        self._held = 0
        self._links: list[_Link] = []
        self._closed = False
        self._retry_after: int | None = None  # answering 429 when set
        self.limited: list[tuple[str, str]] = []  # (method, target) answered 429
        self._answering: set[socket.socket] = set()
        self._acceptor = self._start_acceptor()

    def _start_acceptor(self) -> threading.Thread:
        acceptor = threading.Thread(
            target=self._accept, args=(self._listener,), daemon=True
        )
        acceptor.start()
        return acceptor

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

    def hold_answers(self, matches: Callable[[str, str], bool] | None) -> None:
        """Hold the answer to each request ``matches(method, target)`` picks
        from now on (None: no more), until :meth:`release_answers`."""
        with self._cond:
            self._matches = matches

    def release_answers(self) -> None:
        """Let the answers held so far go (later requests may be held again)."""
        with self._cond:
            for link in self._links:
                link.answer_held = False
            self._cond.notify_all()

    def held(self) -> int:
        """How many connections are waiting at the gate right now."""
        with self._cond:
            return self._held

    def rate_limit(self, retry_after: int = 3600) -> None:
        """Answer every request with 429 and ``Retry-After``, as Docker Hub does."""
        with self._cond:
            self._retry_after = retry_after
        self._drop_all()

    def go_down(self) -> None:
        """Refuse connections, as a stopped upstream does, until ``recover()``."""
        self._stop_listening()
        self._drop_all()

    def recover(self) -> None:
        """Relay again, on the same port."""
        with self._cond:
            self._retry_after = None
        self._drop_all()
        if self._listener.fileno() < 0:
            self._acceptor.join(5)
            self._listener = socket.create_server((LOOPBACK, self.port))
            self._acceptor = self._start_acceptor()

    def _drop_all(self) -> None:
        with self._cond:
            links = list(self._links)
            answering = list(self._answering)
        for link in links:
            self._drop(link)
        for sock in answering:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        with contextlib.suppress(OSError):
            self._listener.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._limit = None
            links = list(self._links)
            self._cond.notify_all()
        self._stop_listening()
        self._drop_all()
        self._acceptor.join(5)
        for link in links:
            for thread in link.threads:
                thread.join(5)

    # --- relaying ------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            with self._cond:
                retry_after = self._retry_after
                if retry_after is not None:
                    self._answering.add(client)
            if retry_after is not None:
                threading.Thread(
                    target=self._answer_429, args=(client, retry_after), daemon=True
                ).start()
                continue
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

    def _answer_429(self, client: socket.socket, retry_after: int) -> None:
        """Read each request (head and body) and answer it 429, keeping alive."""
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = client.recv(_RECV)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = [*lines[0].split(" "), "", ""][:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(buffered) < length:
                    data = client.recv(_RECV)
                    if not data:
                        return
                    buffered += data
                buffered = buffered[length:]
                with self._cond:
                    self.limited.append((method, target))
                body = b"" if method == "HEAD" else RATE_LIMIT_BODY
                client.sendall(
                    b"HTTP/1.1 429 Too Many Requests\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Retry-After: %d\r\n"
                    b"Content-Length: %d\r\n\r\n%s"
                    % (retry_after, len(RATE_LIMIT_BODY), body)
                )
        except OSError:
            pass
        finally:
            with self._cond:
                self._answering.discard(client)
            with contextlib.suppress(OSError):
                client.close()

    def _upward(self, link: _Link) -> None:
        """Client to upstream: never held."""
        try:
            while data := link.client.recv(_RECV):
                self._note_requests(link, data)
                link.server.sendall(data)
        except OSError:
            pass
        self._drop(link)

    def _note_requests(self, link: _Link, data: bytes) -> None:
        """Mark the link when a request whose answer is to wait goes up.

        Before the request is passed on, so no byte of its answer can slip
        through; an HTTP/1.1 client (Docxy) sends the next request on a
        connection only after the last answer, so what comes down next is
        this request's answer.
        """
        with self._cond:
            if self._matches is None:
                link.requests, link.body_left = b"", 0
                return
            buffered = link.requests + data
            while True:
                if link.body_left:
                    skipped = min(link.body_left, len(buffered))
                    link.body_left -= skipped
                    buffered = buffered[skipped:]
                if b"\r\n\r\n" not in buffered:
                    break
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = [*lines[0].split(" "), "", ""][:2]
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        link.body_left = int(value.strip())
                if self._matches(method, target):
                    link.answer_held = True
            link.requests = buffered

    def _downward(self, link: _Link) -> None:
        """Upstream to client: held at the gate once past the limit, or while
        the answer to the request just sent is held."""
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
        if link.closed or self._closed:
            return False
        return link.answer_held or (
            self._limit is not None and link.passed >= self._limit
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
