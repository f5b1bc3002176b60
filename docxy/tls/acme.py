"""The part of RFC 8555 (and RFC 9773, ARI) Docxy needs, on treq and josepy.

Own client rather than certbot's ``acme`` in a thread: it never blocks the
reactor or holds a thread, every request is cancelled at once on shutdown
(a thread blocked in ``requests`` would hold twistd's shutdown), challenge
responders are set up on the reactor thread where the listener reads them,
and ``acme`` 5 no longer knows TLS-ALPN-01 anyway.
"""

from __future__ import annotations

import email.utils
import io
import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

import treq
from cryptography import x509
from josepy.jwa import ES256
from josepy.jwk import JWKEC
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ..oci import USER_AGENT, b64url
from .certs import PrivateKey
from .renewal import Window, ari_cert_id, parse_window

JOSE = b"application/jose+json"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
POLL_TIMEOUT = 180.0


class AcmeError(Exception):
    """The ACME exchange did not produce a certificate; one-line message."""

    retry_after: float | None = None


class AcmeServerError(AcmeError):
    """An RFC 7807 problem document from the server."""

    def __init__(
        self, status: int, kind: str, detail: str, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after
        short = kind.removeprefix("urn:ietf:params:acme:error:")
        super().__init__(f"{status} {short}: {detail}")


def retry_after(response: IResponse, now: float | None = None) -> float | None:
    """Retry-After in seconds (delta or HTTP date), if present and sane."""
    raw = response.headers.getRawHeaders(b"retry-after")
    if not raw:
        return None
    value = raw[0].decode("latin-1").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def make_http(
    reactor: Any, ca_bundle: Path | None
) -> tuple[HTTPClient, HTTPConnectionPool]:
    """An HTTPS client verifying the ACME server (only ``ca_bundle`` if given)."""
    if ca_bundle is not None:
        pems = ca_bundle.read_bytes().split(b"-----END CERTIFICATE-----")
        roots = [
            Certificate.loadPEM(p + b"-----END CERTIFICATE-----")
            for p in pems
            if b"-----BEGIN CERTIFICATE-----" in p
        ]
        policy = BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(roots))
    else:
        policy = BrowserLikePolicyForHTTPS()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    pool.retryAutomatically = False
    agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=30)
    # Request bodies are produced on this reactor too, not the global one.
    cooperator = task.Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    def producer(data: bytes) -> FileBodyProducer:
        return FileBodyProducer(io.BytesIO(data), cooperator=cooperator)

    return HTTPClient(agent, data_to_body_producer=producer), pool


class AcmeClient:
    """One account at one ACME directory; requests are made one at a time."""

    def __init__(
        self,
        reactor: IReactorTime,
        http: HTTPClient,
        directory_url: str,
        account_key: PrivateKey,
        timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.http = http
        self.directory_url = directory_url
        self.jwk = JWKEC(key=account_key)
        self.timeout = timeout
        self.kid: str | None = None
        self._directory: dict[str, Any] | None = None
        self._nonce: str | None = None

    # --- plumbing -----------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        accept: bytes | None = None,
    ) -> tuple[IResponse, bytes]:
        headers = Headers({b"user-agent": [USER_AGENT]})
        if body is not None:
            headers.setRawHeaders(b"content-type", [JOSE])
        if accept is not None:
            headers.setRawHeaders(b"accept", [accept])
        response: IResponse = await self.http.request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=self.timeout,
            reactor=cast(Any, self.reactor),  # treq only times out on it
        )
        content: bytes = await treq.content(response)
        nonce = response.headers.getRawHeaders(b"replay-nonce")
        if nonce:
            self._nonce = nonce[0].decode("ascii")
        if response.code >= 400:
            raise _problem(response, content)
        return response, content

    async def directory(self) -> dict[str, Any]:
        if self._directory is None:
            _, content = await self._request("GET", self.directory_url)
            doc = _json(content, "directory")
            for field in ("newNonce", "newAccount", "newOrder"):
                if not isinstance(doc.get(field), str):
                    raise AcmeError(f"the ACME directory has no {field}")
            self._directory = doc
        return self._directory

    async def _fresh_nonce(self) -> str:
        if self._nonce is None:
            await self._request("HEAD", (await self.directory())["newNonce"])
        if self._nonce is None:
            raise AcmeError("the ACME server sent no Replay-Nonce")
        nonce, self._nonce = self._nonce, None
        return nonce

    def _jws(self, url: str, payload: object | None, nonce: str) -> bytes:
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if self.kid is None:
            protected["jwk"] = self.jwk.public_key().to_partial_json()
        else:
            protected["kid"] = self.kid
        head = b64url(json.dumps(protected).encode())
        body = "" if payload is None else b64url(json.dumps(payload).encode())
        signature = ES256.sign(self.jwk.key, f"{head}.{body}".encode("ascii"))
        return json.dumps(
            {"protected": head, "payload": body, "signature": b64url(signature)}
        ).encode()

    async def _post(
        self, url: str, payload: object | None, accept: bytes | None = None
    ) -> tuple[IResponse, bytes]:
        """A signed POST (``payload`` None: POST-as-GET); retries a bad nonce."""
        for attempt in range(3):
            nonce = await self._fresh_nonce()
            try:
                return await self._request(
                    "POST", url, self._jws(url, payload, nonce), accept
                )
            except AcmeServerError as problem:
                if problem.kind != BAD_NONCE or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def get(self, url: str) -> dict[str, Any]:
        _, content = await self._post(url, None)
        return _json(content, url)

    # --- RFC 8555 -----------------------------------------------------------

    def key_authorization(self, token: str) -> str:
        return f"{token}.{b64url(self.jwk.thumbprint())}"

    async def register(self, email: str | None) -> str:
        """Find or create the account for our key (newAccount is idempotent)."""
        if self.kid is None:
            payload: dict[str, Any] = {"termsOfServiceAgreed": True}
            if email:
                payload["contact"] = [f"mailto:{email}"]
            url = (await self.directory())["newAccount"]
            response, _ = await self._post(url, payload)
            self.kid = _location(response, "newAccount")
        return self.kid

    async def new_order(
        self, names: Collection[str], replaces: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "identifiers": [{"type": "dns", "value": n} for n in names]
        }
        if replaces is not None:
            payload["replaces"] = replaces
        response, content = await self._post(
            (await self.directory())["newOrder"], payload
        )
        return _location(response, "newOrder"), _json(content, "order")

    async def respond(self, challenge_url: str) -> None:
        await self._post(challenge_url, {})

    async def poll(
        self, url: str, done: Collection[str], timeout: float = POLL_TIMEOUT
    ) -> dict[str, Any]:
        """POST-as-GET ``url`` until its status is in ``done``."""
        deadline = self.reactor.seconds() + timeout
        while True:
            response, content = await self._post(url, None)
            doc = _json(content, url)
            if doc.get("status") in done:
                return doc
            if self.reactor.seconds() > deadline:
                raise AcmeError(
                    f"still {doc.get('status')!r} after {timeout:g}s: {url}"
                )
            wait = retry_after(response)
            await task.deferLater(
                self.reactor, min(max(wait if wait is not None else 1.0, 0.2), 10.0)
            )

    async def finalize(self, order: dict[str, Any], csr_der: bytes) -> None:
        await self._post(order["finalize"], {"csr": b64url(csr_der)})

    async def certificate(self, url: str) -> list[x509.Certificate]:
        _, content = await self._post(
            url, None, accept=b"application/pem-certificate-chain"
        )
        try:
            return x509.load_pem_x509_certificates(content)
        except ValueError:
            raise AcmeError("the ACME server sent no PEM certificate chain") from None

    # --- RFC 9773 (ARI) -----------------------------------------------------

    async def renewal_window(self, cert: x509.Certificate) -> Window | None:
        """The CA's suggested renewal window, or None if it offers no ARI."""
        base = (await self.directory()).get("renewalInfo")
        if not isinstance(base, str):
            return None
        _, content = await self._request(
            "GET", f"{base.rstrip('/')}/{ari_cert_id(cert)}"
        )
        try:
            return parse_window(_json(content, "renewalInfo"))
        except ValueError as e:
            raise AcmeError(f"bad renewalInfo: {e}") from None


def _json(content: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(content)
    except ValueError:
        raise AcmeError(f"the ACME server sent no JSON for {what}") from None
    if not isinstance(doc, dict):
        raise AcmeError(f"the ACME server sent no JSON object for {what}")
    return doc


def _location(response: IResponse, what: str) -> str:
    raw = response.headers.getRawHeaders(b"location")
    if not raw:
        raise AcmeError(f"{what}: the ACME server sent no Location")
    return str(raw[0].decode("ascii"))


def _problem(response: IResponse, content: bytes) -> AcmeServerError:
    try:
        doc = json.loads(content)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return AcmeServerError(
            response.code, "http", f"HTTP {response.code}", retry_after(response)
        )
    detail = str(doc.get("detail", ""))[:300]
    for sub in doc.get("subproblems") or []:
        if isinstance(sub, dict) and sub.get("detail"):
            detail += f"; {str(sub['detail'])[:200]}"
    return AcmeServerError(
        response.code,
        str(doc.get("type", "about:blank")),
        detail,
        retry_after(response),
    )
