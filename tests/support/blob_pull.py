"""A blob pulled by hand from a running Docxy, as a registry client does it.

For tests that hold a GET open mid-body, count bytes up to a cut, or
pull with a token of their own: a pull token from the realm of Docxy's
challenge, a blob GET whose body is left unread, and its bytes.
"""

from __future__ import annotations

import http.client

from .docxy import Docxy
from .processes import LOOPBACK
from .registry import fetch, get_token, parse_challenge


def pull_token(docxy: Docxy, repo: str, creds: tuple[str, str] | None = None) -> str:
    """A pull token as a client gets one: from the realm of Docxy's challenge."""
    ping = fetch(f"{docxy.url}/v2/")
    assert ping.status == 401, (ping.status, ping.body)
    _, params = parse_challenge(ping.header("WWW-Authenticate") or "")
    return get_token(
        params["realm"], params["service"], [f"repository:{repo}:pull"], creds
    )


def open_blob(
    docxy: Docxy, repo: str, digest: str, token: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A blob GET whose status and headers have arrived; the body is unread."""
    conn = http.client.HTTPConnection(LOOPBACK, docxy.port, timeout=60)
    conn.request(
        "GET",
        f"/v2/{repo}/blobs/{digest}",
        headers={"Authorization": f"Bearer {token}"},
    )
    return conn, conn.getresponse()


def read_all(response: http.client.HTTPResponse) -> bytes:
    """Every body byte that arrives before the end or before the cut."""
    parts = []
    try:
        while chunk := response.read(64 * 1024):
            parts.append(chunk)
    except (http.client.IncompleteRead, ConnectionError):
        pass  # a cut connection: what arrived is what counts
    return b"".join(parts)


def get_blob(
    docxy: Docxy, repo: str, digest: str, token: str
) -> tuple[int, int | None, bytes]:
    """(status, Content-Length, the bytes that arrived) of a plain blob GET."""
    conn, response = open_blob(docxy, repo, digest, token)
    try:
        length = response.getheader("Content-Length")
        return response.status, int(length) if length else None, read_all(response)
    finally:
        conn.close()
