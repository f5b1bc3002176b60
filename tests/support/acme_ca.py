"""A scripted ACME CA (RFC 8555) as a twisted.web Resource, for in-memory tests.

:class:`ScriptedCA` has a directory, nonces and signed POST handlers by
path; :class:`IssuingCA` adds one account, orders that need one http-01
challenge, and certificates signed by a test CA over the CSR's key, with
the validity the test chooses. Neither checks signatures: what the client
signs is recorded (``protected``) for the test to look at. The real CA,
pebble, is in the integration tests.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.web.server import Request

from .memory import Scripted

Handler = Callable[[Request], bytes]


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def problem(request: Request, status: int, kind: str, detail: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/problem+json")
    return json.dumps({"type": kind, "detail": detail}).encode()


class ScriptedCA(Scripted):
    """A directory, nonces, and POST handlers by path; records each JWS."""

    def __init__(self, base: str, posts: dict[str, Handler]) -> None:
        super().__init__(
            {
                "/dir": self.directory,
                "/nonce": self.nonce,
                **{path: self.signed(h) for path, h in posts.items()},
            }
        )
        self.base = base
        self.nonces = 0
        self.protected: list[dict[str, Any]] = []
        self.payloads: list[dict[str, Any] | None] = []

    def directory(self, request: Request) -> bytes:
        names = {"newNonce": "nonce", "newAccount": "account", "newOrder": "order"}
        return json.dumps({k: f"{self.base}/{v}" for k, v in names.items()}).encode()

    def next_nonce(self, request: Request) -> None:
        self.nonces += 1
        request.setHeader(b"replay-nonce", f"n{self.nonces}".encode())

    def nonce(self, request: Request) -> bytes:
        self.next_nonce(request)
        return b""

    def signed(self, handler: Handler) -> Handler:
        def post(request: Request) -> bytes:
            assert request.content is not None
            jws = json.loads(request.content.read())
            self.protected.append(json.loads(unb64(jws["protected"])))
            payload = jws["payload"]
            self.payloads.append(json.loads(unb64(payload)) if payload else None)
            self.next_nonce(request)
            return handler(request)

        return post

    def located(self, request: Request, path: str, doc: object) -> bytes:
        request.setResponseCode(201)
        request.setHeader(b"location", f"{self.base}{path}".encode())
        return json.dumps(doc).encode()


class IssuingCA(ScriptedCA):
    """Issues certificates for one http-01 challenge; ``down`` refuses orders."""

    def __init__(self, base: str, validity: datetime.timedelta) -> None:
        super().__init__(
            base,
            {
                "/account": lambda r: self.located(r, "/acct/1", {"status": "valid"}),
                "/order": self.new_order,
                "/order/1": self.order,
                "/authz/1": self.authz,
                "/chall/1": self.respond,
                "/finalize/1": self.finalize,
                "/cert/1": self.certificate,
            },
        )
        self.validity = validity
        self.down = False
        self.orders = 0
        self.name = ""
        self.state = "pending"
        self.chain: bytes = b""
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scripted")])

    def new_order(self, request: Request) -> bytes:
        self.orders += 1
        if self.down:
            return problem(
                request, 503, "urn:ietf:params:acme:error:serverInternal", "down"
            )
        payload = self.payloads[-1] or {}
        self.name = payload["identifiers"][0]["value"]
        self.state = "pending"
        return self.located(request, "/order/1", self.order_doc())

    def order_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": self.state,
            "identifiers": [{"type": "dns", "value": self.name}],
            "authorizations": [f"{self.base}/authz/1"],
            "finalize": f"{self.base}/finalize/1",
        }
        if self.state == "valid":
            doc["certificate"] = f"{self.base}/cert/1"
        return doc

    def order(self, request: Request) -> bytes:
        return json.dumps(self.order_doc()).encode()

    def authz(self, request: Request) -> bytes:
        valid = self.state != "pending"
        challenge = {
            "type": "http-01",
            "url": f"{self.base}/chall/1",
            "token": "token-1",
            "status": "valid" if valid else "pending",
        }
        return json.dumps(
            {
                "status": "valid" if valid else "pending",
                "identifier": {"type": "dns", "value": self.name},
                "challenges": [challenge],
            }
        ).encode()

    def respond(self, request: Request) -> bytes:
        self.state = "ready"
        return b"{}"

    def finalize(self, request: Request) -> bytes:
        payload = self.payloads[-1] or {}
        csr = x509.load_der_x509_csr(unb64(payload["csr"]))
        self.chain = self.issue(csr.public_key(), self.name)
        self.state = "valid"
        return json.dumps(self.order_doc()).encode()

    def certificate(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/pem-certificate-chain")
        return self.chain

    def issue(
        self, key: Any, name: str, not_before: datetime.datetime | None = None
    ) -> bytes:
        """A PEM chain for ``key`` and ``name``, from ``not_before`` (now)."""
        start = not_before or datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + self.validity)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
