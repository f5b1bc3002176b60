"""The real CNCF distribution registry (``docker-registry``) as upstream.

Why: Docxy is a proxy; only the real registry's behaviour (token auth,
schema negotiation, 307 blob redirects, TLS) tells whether it proxies
correctly. Three variants:

- plain token-auth upstream (like registry-1.docker.io);
- "CDN": the ``redirect`` storage middleware answers blob GET/HEAD with
  307 to a static file server over the storage directory (like Docker
  Hub's CDN);
- TLS: https with a throwaway test CA.

Each registry writes a combined access log; :func:`parse_access_log`
turns it (and the CDN's) into entries so tests can count upstream hits.
Log lines are written after the response, so ``requests()`` first sends a
unique marker request and waits for it to appear (no sleeps).
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import re
import secrets
import ssl
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .processes import LOOPBACK, ManagedProcess, free_port, wait_until
from .token_service import TokenService

if TYPE_CHECKING:
    from .images import ImageInfo

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "test-registry"
ISSUER = "docxy-test-token-issuer"
SYNC_PREFIX = "/__docxy_test_sync__/"

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# --------------------------------------------------------------------------
# A tiny HTTP client (stdlib) for tests and fixtures
# --------------------------------------------------------------------------


@dataclass
class Response:
    """A fully read HTTP response; header names are matched case-insensitively."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    ca_path: Path | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request on a fresh connection; never follows redirects.

    ``url`` may carry an already-encoded path (``%2F`` stays as is).
    """
    parts = urlsplit(url)
    assert parts.hostname in (LOOPBACK, "localhost"), f"loopback only: {url}"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="..",service=".."`` -> ("bearer", {realm, service, ...})."""
    scheme, _, rest = value.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def challenge(resp: Response) -> dict[str, str]:
    """The parameters of the one Bearer challenge of a 401."""
    assert resp.status == 401, (resp.status, resp.body)
    values = resp.header_all("WWW-Authenticate")
    assert len(values) == 1, values
    scheme, params = parse_challenge(values[0])
    assert scheme == "bearer", values[0]
    return params


def get_token(
    realm: str,
    service: str,
    scopes: Sequence[str] = (),
    creds: tuple[str, str] | None = None,
    ca_path: Path | None = None,
) -> str:
    """A bearer token from a realm (the token service or Docxy's /auth/token)."""
    query = urlencode([("service", service), *(("scope", s) for s in scopes)])
    headers = {"Authorization": basic_auth(*creds)} if creds else {}
    resp = fetch(f"{realm}?{query}", headers=headers, ca_path=ca_path)
    assert resp.status == 200, f"token request failed: {resp.status} {resp.body!r}"
    doc = resp.json()
    token: str = doc.get("token") or doc["access_token"]
    return token


# --------------------------------------------------------------------------
# Access logs
# --------------------------------------------------------------------------

_CLF = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\S+)'
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)


@dataclass(frozen=True)
class AccessLogEntry:
    """One request from a combined-format access log."""

    method: str
    path: str
    status: int
    referer: str
    user_agent: str


def parse_access_log(text: str) -> list[AccessLogEntry]:
    """Entries of a combined log (distribution's or twisted.web's), in order.

    Lines that are not access-log lines (the registry's JSON application
    log) are skipped; marker requests sent by ``sync`` are dropped.
    """
    entries = []
    for line in text.splitlines():
        m = _CLF.search(line)
        if not m or line.lstrip().startswith("{"):
            continue
        if m["path"].startswith(SYNC_PREFIX):
            continue
        referer = m["referer"] or ""
        entries.append(
            AccessLogEntry(
                m["method"],
                m["path"],
                int(m["status"]),
                "" if referer == "-" else referer,
                m["agent"] or "",
            )
        )
    return entries


class _LoggedServer(ManagedProcess):
    """A server whose access log we read after a marker request (sync)."""

    url: str
    access_log: Path
    ca_path: Path | None = None

    def sync(self) -> None:
        """Make sure every request answered so far is in the access log."""
        marker = SYNC_PREFIX + uuid.uuid4().hex
        fetch(self.url + marker, ca_path=self.ca_path)
        wait_until(
            lambda: marker in self.access_log.read_text(errors="replace"),
            10.0,
            f"marker in {self.access_log}",
        )

    def entries(self) -> list[AccessLogEntry]:
        self.sync()
        return parse_access_log(self.access_log.read_text(errors="replace"))

    def requests(self) -> list[tuple[str, str]]:
        """(method, path incl. query) of every request so far, in order."""
        return [(e.method, e.path) for e in self.entries()]


# --------------------------------------------------------------------------
# Test CA for the TLS variant
# --------------------------------------------------------------------------


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def make_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for 127.0.0.1 / localhost.

    Returns (ca_cert, server_cert, server_key) paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Docxy Test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.crt"
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return ca_path, cert_path, key_path


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class StaticCDN(_LoggedServer):
    """``twistd web`` over the registry storage: the 307 target (Range works)."""

    def __init__(self, workdir: Path, root: Path, port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.access_log = workdir / "cdn-access.log"
        self.access_log.touch()
        twistd = str(Path(sys.executable).with_name("twistd"))
        argv = [
            twistd,
            "-n",
            "--pidfile=",
            "web",
            "--path",
            str(root),
            "--listen",
            f"tcp:{self.port}:interface={LOOPBACK}",
            "--logfile",
            str(self.access_log),
            "--mime-type",
            "application/octet-stream",
        ]
        super().__init__(argv, workdir / "cdn.log", cwd=workdir)
        self.wait_for_port(self.port)


class Registry(_LoggedServer):
    """``docker-registry serve`` on a free loopback port.

    With token auth like Docker Hub, or none (``token=None``): a plain
    internal registry whose ``/v2/`` is open.
    """

    def __init__(
        self,
        workdir: Path,
        storage: Path,
        token: TokenService | None,
        *,
        readonly: bool = False,
        redirect_base: str | None = None,
        tls: tuple[Path, Path] | None = None,
        ca_path: Path | None = None,
        realm: str | None = None,
    ) -> None:
        """``realm``: the token realm its challenges name (default: ``token``'s)."""
        if not Path(REGISTRY_BIN).exists():
            raise RuntimeError(
                f"{REGISTRY_BIN} missing: apt-get install docker-registry"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.hostport = f"{LOOPBACK}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.hostport}"
        self.ca_path = ca_path
        self.storage = storage
        self.config_path = workdir / "config.yml"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {
                "level": "info",
                "formatter": "json",
                "accesslog": {"disabled": False},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {
                    "uploadpurging": {"enabled": False},
                    "readonly": {"enabled": readonly},
                },
                "delete": {"enabled": True},
            },
            "http": {
                "addr": self.hostport,
                "secret": secrets.token_hex(16),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if token is not None:
            config["auth"] = {
                "token": {
                    "realm": realm or token.realm,
                    "service": token.service,
                    "issuer": token.issuer,
                    "rootcertbundle": str(token.cert_path),
                }
            }
        if redirect_base:
            config["middleware"] = {
                "storage": [{"name": "redirect", "options": {"baseurl": redirect_base}}]
            }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        # JSON is valid YAML, and we need no YAML library for it.
        self.config_path.write_text(json.dumps(config, indent=2))
        # The registry writes its access log to stdout, which ManagedProcess
        # sends to the log file.
        log_path = workdir / "registry.log"
        self.access_log = log_path
        super().__init__(
            [REGISTRY_BIN, "serve", str(self.config_path)], log_path, cwd=workdir
        )
        self.wait_for_port(self.port)


@dataclass
class Upstream:
    """A token service + registry (+ CDN): what Docxy mirrors.

    The attribute names are the fixture contract of ``tests/conftest.py``.
    """

    token: TokenService | None  # None: a registry without auth
    registry: Registry
    cdn: StaticCDN | None = None
    ca_path: Path | None = None
    images: dict[str, ImageInfo] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def hostport(self) -> str:
        return self.registry.hostport

    @property
    def token_url(self) -> str:
        return self._token_service.realm

    @property
    def service(self) -> str:
        return self._token_service.service

    @property
    def _token_service(self) -> TokenService:
        assert self.token is not None, "this upstream has no token service"
        return self.token

    @property
    def registry_log(self) -> Path:
        return self.registry.access_log

    def requests(self) -> list[tuple[str, str]]:
        """(method, path incl. query) the registry saw, in order."""
        return self.registry.requests()

    def registry_entries(self) -> list[AccessLogEntry]:
        return self.registry.entries()

    def token_requests(self) -> list[dict[str, Any]]:
        """The token service's JSON log entries, in order."""
        return self._token_service.requests()

    def cdn_requests(self) -> list[tuple[str, str]]:
        """(method, path) the CDN saw; only for the CDN variant."""
        assert self.cdn is not None, "not a CDN upstream"
        return self.cdn.requests()

    def cdn_entries(self) -> list[AccessLogEntry]:
        assert self.cdn is not None, "not a CDN upstream"
        return self.cdn.entries()

    def token_for(
        self, scopes: Sequence[str], creds: tuple[str, str] | None = None
    ) -> str:
        """A token straight from the token service (bypassing Docxy)."""
        return get_token(self.token_url, self.service, scopes, creds, self.ca_path)

    def blob_bytes(self, repo: str, digest: str) -> bytes:
        """A blob's bytes straight from the storage directory."""
        algo, hexdigest = digest.split(":", 1)
        path = (
            self.registry.storage
            / "docker/registry/v2/blobs"
            / algo
            / hexdigest[:2]
            / hexdigest
            / "data"
        )
        return path.read_bytes()

    def manifest(
        self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> Response:
        """A manifest straight from the registry, with the pusher's token."""
        headers = {"Accept": accept}
        if self.token is not None:
            token = self.token_for([f"repository:{repo}:pull"], ("pusher", "pushpass"))
            headers["Authorization"] = f"Bearer {token}"
        resp = fetch(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            headers=headers,
            ca_path=self.ca_path,
        )
        assert resp.status == 200, f"{repo}:{reference}: {resp.status} {resp.body!r}"
        return resp

    def stop(self) -> None:
        """Stop everything this upstream started, by PID."""
        for proc in (self.registry, self.cdn, self.token):
            if proc is not None:
                proc.stop()


def start_upstream(
    workdir: Path,
    repositories: Sequence[str],
    *,
    storage: Path | None = None,
    readonly: bool = False,
    cdn: bool = False,
    tls: bool = False,
    service: str = SERVICE,
    budgets: dict[str, int] | None = None,
) -> Upstream:
    """Start a token service and a registry (variant a, b or c) in ``workdir``.

    ``budgets``: pull budgets per account for the token service.

    ``service`` is the token service name the registry's challenge names
    (give each of several upstreams its own to tell their tokens apart).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    storage = storage or workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    ca_path = None
    tls_pair = None
    if tls:
        ca_path, cert, key = make_test_ca(workdir / "pki")
        tls_pair = (cert, key)
    token = TokenService(
        workdir / "token",
        service,
        ISSUER,
        repositories=repositories,
        tls=tls_pair,
        budgets=budgets,
    )
    cdn_server = None
    registry = None
    try:
        if cdn:
            cdn_server = StaticCDN(workdir / "cdn", storage)
        registry = Registry(
            workdir / "registry",
            storage,
            token,
            readonly=readonly,
            redirect_base=cdn_server.url if cdn_server else None,
            tls=tls_pair,
            ca_path=ca_path,
        )
    except BaseException:
        for proc in (cdn_server, token):
            if proc is not None:
                proc.stop()
        raise
    return Upstream(token=token, registry=registry, cdn=cdn_server, ca_path=ca_path)


def start_plain_registry(workdir: Path) -> Upstream:
    """A registry without auth (no token service): a plain internal registry."""
    workdir.mkdir(parents=True, exist_ok=True)
    registry = Registry(workdir / "registry", workdir / "storage", None)
    return Upstream(token=None, registry=registry)
