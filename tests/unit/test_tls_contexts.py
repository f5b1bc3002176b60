"""The listener's TLS: SNI selection, the TLS-ALPN-01 answer, hot swap, hygiene.

Why: these decide which certificate a client sees; they are driven here
with real OpenSSL handshakes over memory BIOs, no sockets.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

from docxy.tls.certs import ACME_IDENTIFIER, KeyAndChain, alpn_challenge, placeholder
from docxy.tls.contexts import ALPN_ACME, ALPN_HTTP11, SniContexts


def handshake(
    contexts: SniContexts,
    name: str | None,
    alpn: list[bytes] | None = None,
    max_version: int | None = None,
    client_ciphers: list[str] | None = None,
) -> tuple[x509.Certificate, bytes | None, SSL.Connection]:
    """Client and server connections pumping bytes until both are done."""
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        client_ctx.set_max_proto_version(max_version)
    if client_ciphers is not None:
        client_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        client_ctx.set_cipher_list(":".join(client_ciphers).encode())
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    if name is not None:
        client.set_tlsext_host_name(name.encode())
    if alpn:
        client.set_alpn_protos(alpn)
    server = contexts.serverConnectionForTLS(None)
    server.set_accept_state()
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, conn in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
        for src, dst in ((client, server), (server, client)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
        if all(done.values()):
            break
    peer = client.get_peer_certificate()
    assert peer is not None
    protocol = client.get_alpn_proto_negotiated() or None
    return peer.to_cryptography(), protocol, server


@pytest.fixture
def two_names() -> tuple[SniContexts, KeyAndChain, KeyAndChain]:
    contexts = SniContexts(["a.example", "b.example"], placeholder(["a.example"]))
    a, b = placeholder(["a.example"]), placeholder(["b.example"])
    contexts.install("a.example", a)
    contexts.install("b.example", b)
    return contexts, a, b


def test_each_name_gets_its_certificate(two_names: Any) -> None:
    contexts, a, b = two_names
    assert handshake(contexts, "a.example")[0].serial_number == a.serial
    assert handshake(contexts, "B.Example")[0].serial_number == b.serial


def test_unknown_or_missing_sni_gets_the_first_name(two_names: Any) -> None:
    contexts, a, _ = two_names
    assert handshake(contexts, "evil.example")[0].serial_number == a.serial
    assert handshake(contexts, None)[0].serial_number == a.serial


def test_swap_serves_the_new_certificate_on_the_next_handshake(two_names: Any) -> None:
    contexts, _, _ = two_names
    renewed = placeholder(["b.example"])
    contexts.install("b.example", renewed)
    assert contexts.serial("b.example") == renewed.serial
    assert handshake(contexts, "b.example")[0].serial_number == renewed.serial


def test_alpn_offers_http11_only(two_names: Any) -> None:
    contexts, _, _ = two_names
    assert handshake(contexts, "a.example", [b"h2", ALPN_HTTP11])[1] == ALPN_HTTP11
    assert handshake(contexts, "a.example", [b"h2"])[1] is None


def test_acme_tls_alpn_gets_the_challenge_certificate(two_names: Any) -> None:
    contexts, _, b = two_names
    challenge = alpn_challenge("b.example", "tok.thumb")
    contexts.set_challenge("b.example", challenge)
    cert, protocol, _ = handshake(contexts, "b.example", [ALPN_ACME])
    assert protocol == ALPN_ACME
    assert cert.serial_number == challenge.serial
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
    # Ordinary clients of the same name still get the real certificate.
    assert handshake(contexts, "b.example", [ALPN_HTTP11])[0].serial_number == b.serial
    contexts.clear_challenge("b.example")
    cert, protocol, _ = handshake(contexts, "b.example", [ALPN_ACME])
    assert protocol is None
    assert cert.serial_number == b.serial


def test_no_challenge_certificate_for_another_name(two_names: Any) -> None:
    contexts, a, _ = two_names
    contexts.set_challenge("b.example", alpn_challenge("b.example", "tok.thumb"))
    cert, protocol, _ = handshake(contexts, "a.example", [ALPN_ACME])
    assert protocol is None
    assert cert.serial_number == a.serial


def test_tls_1_1_is_refused(two_names: Any) -> None:
    contexts, _, _ = two_names
    with pytest.raises(SSL.Error):
        handshake(contexts, "a.example", max_version=SSL.TLS1_1_VERSION)


def test_server_prefers_its_own_cipher_order(two_names: Any) -> None:
    contexts, _, _ = two_names
    ciphers = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]
    chosen = {
        handshake(contexts, "a.example", client_ciphers=order)[2].get_cipher_name()
        for order in (ciphers, ciphers[::-1])
    }
    assert len(chosen) == 1, chosen
