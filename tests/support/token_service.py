"""A Docker-Hub-like token service for the real distribution registry.

Why: Docxy must be tested against the same auth dance Docker Hub uses
(bearer challenge, token realm, anonymous pull, private namespaces,
``insufficient_scope`` for unknown repositories), without a network. The
distribution registry 2.8 accepts RS256 JWTs whose ``kid`` is the libtrust
fingerprint of a key whose certificate is in its ``rootcertbundle``.

Run standalone (the fixtures do it as a subprocess, so it is stopped by
PID like every other component)::

    python -m tests.support.token_service --port P --key KEY.pem \
        --service test-registry --issuer test-issuer --log LOG.jsonl \
        [--repository library/alpine ...] [--tls-cert C --tls-key K]

Policy (like Docker Hub):

- anonymous ``pull`` on public repositories that exist;
- the ``private/`` namespace needs ``alice:secret`` (or an admin);
  ``bob:builder`` is a user with no more rights than anonymous;
- unknown repositories get a token *without* access, so the registry
  answers 401 ``insufficient_scope`` (not 404);
- ``pusher:pushpass`` and ``admin:adminpass`` may push anywhere (a push
  grant makes the repository known);
- bad credentials: 401 from the token endpoint;
- pull budgets, when given (``--budget alice=3``, ``--budget anonymous=5``
  for each client address without an account): every token granting a
  ``pull`` spends one pull of its account (Docker Hub counts manifest GETs;
  behind Docxy, one token per scope is the same count). Answers carry
  Docker Hub's ``ratelimit-limit``, ``ratelimit-remaining`` and
  ``docker-ratelimit-source``; once spent: 429 with ``Retry-After`` and Hub's
  ``TOOMANYREQUESTS`` body.

Every request appends one JSON line to the log: method, path, params (in
order, duplicates kept; values of ``password`` / ``refresh_token`` are
replaced by ``None``), the Basic-auth user, and the status.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import hashlib
import json
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

if __package__:
    from .processes import LOOPBACK, ManagedProcess, free_port
else:  # pragma: no cover - run as a plain script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.processes import LOOPBACK, ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

TOKEN_PATH = "/token"
EXPIRES_IN = 300

# user -> password; the same table the tests use.
USERS: dict[str, str] = {
    "alice": "secret",
    "bob": "builder",
    "pusher": "pushpass",
    "admin": "adminpass",
}
PUSHERS = frozenset({"pusher", "admin"})
PRIVATE_NAMESPACE = "private/"
PRIVATE_READERS = frozenset({"alice", "admin"})
REDACTED_KEYS = frozenset({"password", "refresh_token"})
BUDGET_WINDOW = 21600
BUDGET_RETRY_AFTER = 3600
HUB_LIMIT_MESSAGE = (
    "You have reached your pull rate limit. You may increase the limit by "
    "authenticating and upgrading: https://www.docker.com/increase-rate-limit"
)


# --------------------------------------------------------------------------
# Keys and JWTs
# --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    """JOSE base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_kid(public_key: rsa.RSAPublicKey) -> str:
    """The key id distribution 2.8 looks up in its rootcertbundle."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def generate_signing_material(key_path: Path, cert_path: Path) -> None:
    """An RSA key and a self-signed cert for the registry's rootcertbundle."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "docxy test token signer")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def sign_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    """RS256 JWT with the libtrust ``kid`` header distribution expects."""
    header = {"typ": "JWT", "alg": "RS256", "kid": libtrust_kid(key.public_key())}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(
        signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
    )
    return signing_input + "." + b64url(signature)


# --------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------


@dataclass
class Policy:
    """Who may do what; repositories are 'known' once declared or pushed."""

    known: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self, user: str | None, name: str, wanted: list[str]) -> list[str]:
        """The subset of ``wanted`` actions ``user`` gets on repository ``name``."""
        granted: set[str] = set()
        with self.lock:
            if user in PUSHERS:
                granted |= {"pull", "push"}
                if user == "admin":
                    granted |= {"delete", "*"}
                if "push" in wanted:
                    self.known.add(name)
            elif name in self.known:
                if name.startswith(PRIVATE_NAMESPACE):
                    if user in PRIVATE_READERS:
                        granted.add("pull")
                else:
                    granted.add("pull")
        return [a for a in wanted if a in granted]

    def access(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        """The JWT ``access`` claim for the requested scopes."""
        result: list[dict[str, Any]] = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) < 3 or parts[0] != "repository":
                    continue  # registry:catalog:* etc.: nothing, as Hub
                # name may contain a port-less host? never here; actions last
                name = ":".join(parts[1:-1])
                actions = [a for a in parts[-1].split(",") if a]
                granted = self.allowed(user, name, actions)
                if granted:
                    result.append(
                        {"type": "repository", "name": name, "actions": granted}
                    )
        return result


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class TokenServer(ThreadingHTTPServer):
    """Carries the configuration for the handler."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        key: rsa.RSAPrivateKey,
        service: str,
        issuer: str,
        log_path: Path,
        policy: Policy,
        budgets: dict[str, int] | None = None,
    ) -> None:
        super().__init__(address, TokenHandler)
        # account ("anonymous": per client address) -> pulls per window.
        self.budgets = budgets or {}
        self.spent: dict[str, int] = {}
        self.key = key
        self.service = service
        self.issuer = issuer
        self.log_path = log_path
        self.policy = policy
        self.refresh_tokens: dict[str, str] = {}
        self.log_lock = threading.Lock()


class TokenHandler(BaseHTTPRequestHandler):
    """GET and OAuth2 POST on /token, like auth.docker.io."""

    server: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the JSON log is the record."""

    # -- helpers -----------------------------------------------------------

    def _basic_auth(self) -> tuple[str | None, str | None, bool]:
        """(user, password, malformed) from an HTTP Basic header."""
        header = self.headers.get("Authorization")
        if not header:
            return None, None, False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None, True
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None, True
        user, sep, password = decoded.partition(":")
        if not sep:
            return user, None, True
        return user, password, False

    def _record(
        self, params: list[tuple[str, str]], user: str | None, status: int
    ) -> None:
        entry = {
            "method": self.command,
            "path": urlsplit(self.path).path,
            "params": [[k, None if k in REDACTED_KEYS else v] for k, v in params],
            "user": user,
            "status": status,
        }
        with self.server.log_lock, open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _send_json(
        self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _issue(
        self, user: str | None, scopes: list[str], refresh: bool
    ) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.server.issuer,
            "sub": user or "",
            "aud": self.server.service,
            "exp": now + EXPIRES_IN,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.server.policy.access(user, scopes),
        }
        token = sign_jwt(self.server.key, claims)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": EXPIRES_IN,
            "issued_at": datetime.datetime.fromtimestamp(now, datetime.UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
        if refresh and user:
            rt = secrets.token_urlsafe(24)
            self.server.refresh_tokens[rt] = user
            body["refresh_token"] = rt
        return body

    def _answer(
        self,
        params: list[tuple[str, str]],
        basic_user: str | None,
        user: str | None,
        auth_error: str | None,
        refresh: bool,
    ) -> None:
        """Common tail of GET and POST: check service, then issue or refuse."""
        services = [v for k, v in params if k == "service"]
        body: dict[str, Any]
        if auth_error is not None:
            status, body = 401, {"details": auth_error}
            extra = {"WWW-Authenticate": 'Basic realm="test token service"'}
        elif services != [self.server.service]:
            status, body, extra = 400, {"details": "missing or wrong service"}, {}
        else:
            scopes = [v for k, v in params if k == "scope"]
            status, extra = 200, self._spend(user, scopes)
            if extra.get("Retry-After"):
                status = 429
                body = {
                    "errors": [
                        {
                            "code": "TOOMANYREQUESTS",
                            "message": HUB_LIMIT_MESSAGE,
                            "detail": None,
                        }
                    ]
                }
            else:
                body = self._issue(user, scopes, refresh)
        self._record(params, basic_user, status)
        self._send_json(status, body, extra)

    def _spend(self, user: str | None, scopes: list[str]) -> dict[str, str]:
        """Docker Hub's budget headers; with Retry-After once it is spent."""
        account = user or "anonymous"
        limit = self.server.budgets.get(account)
        if limit is None:
            return {}
        source = user or self.client_address[0]
        pulls = any(s.endswith(":pull") or ":pull," in s for s in scopes)
        with self.server.log_lock:
            spent = self.server.spent.get(source, 0)
            if pulls and spent >= limit:
                return {
                    "ratelimit-limit": f"{limit};w={BUDGET_WINDOW}",
                    "ratelimit-remaining": f"0;w={BUDGET_WINDOW}",
                    "docker-ratelimit-source": source,
                    "Retry-After": str(BUDGET_RETRY_AFTER),
                }
            if pulls:
                spent += 1
                self.server.spent[source] = spent
        return {
            "ratelimit-limit": f"{limit};w={BUDGET_WINDOW}",
            "ratelimit-remaining": f"{limit - spent};w={BUDGET_WINDOW}",
            "docker-ratelimit-source": source,
        }

    def _check_user(self, user: str | None, password: str | None) -> str | None:
        """Error text for bad credentials, or None."""
        if user is None:
            return None
        if password is None or USERS.get(user) != password:
            return "incorrect username or password"
        return None

    # -- verbs -------------------------------------------------------------

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        params = parse_qsl(split.query, keep_blank_values=True)
        user, password, malformed = self._basic_auth()
        if split.path != TOKEN_PATH:
            self._record(params, user, 404)
            self._send_json(404, {"details": "not found"})
            return
        error = (
            "malformed Authorization" if malformed else self._check_user(user, password)
        )
        offline = any(k == "offline_token" and v == "true" for k, v in params)
        self._answer(params, user, user if error is None else None, error, offline)

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        params = parse_qsl(split.query, keep_blank_values=True)
        params += parse_qsl(raw, keep_blank_values=True)
        basic_user, _, _ = self._basic_auth()
        if split.path != TOKEN_PATH:
            self._record(params, basic_user, 404)
            self._send_json(404, {"details": "not found"})
            return
        form = dict(params)
        grant = form.get("grant_type")
        user: str | None = None
        error: str | None = None
        if grant == "password":
            user = form.get("username")
            error = (
                self._check_user(user, form.get("password"))
                if user
                else "username required"
            )
        elif grant == "refresh_token":
            user = self.server.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                error = "invalid refresh token"
        else:
            self._record(params, basic_user, 400)
            self._send_json(400, {"details": "unsupported grant_type"})
            return
        self._answer(
            params,
            basic_user,
            None if error else user,
            error,
            refresh=grant == "password",
        )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", type=Path, required=True, help="PEM RSA signing key")
    parser.add_argument("--service", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument(
        "--log", type=Path, required=True, help="JSON-lines request log"
    )
    parser.add_argument(
        "--repository", action="append", default=[], help="a known repo"
    )
    parser.add_argument(
        "--budget", action="append", default=[], help="ACCOUNT=PULLS (or anonymous=)"
    )
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    server = TokenServer(
        (args.host, args.port),
        key,
        args.service,
        args.issuer,
        args.log,
        Policy(known=set(args.repository)),
        {k: int(v) for k, _, v in (b.partition("=") for b in args.budget)},
    )
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        # Handshake lazily in the handler thread, not in accept().
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    print(f"token service listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()  # until SIGTERM from the test's ManagedProcess
    return 0


class TokenService(ManagedProcess):
    """This module run as a subprocess, with its key, cert and log."""

    def __init__(
        self,
        workdir: Path,
        service: str,
        issuer: str,
        repositories: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
        budgets: dict[str, int] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.service = service
        self.issuer = issuer
        self.key_path = workdir / "signing-key.pem"
        self.cert_path = workdir / "signing-cert.pem"
        self.request_log = workdir / "token-requests.jsonl"
        self.request_log.touch()
        generate_signing_material(self.key_path, self.cert_path)
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{LOOPBACK}:{self.port}"
        self.realm = self.url + TOKEN_PATH
        argv = [
            sys.executable,
            "-m",
            "tests.support.token_service",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--key",
            str(self.key_path),
            "--service",
            service,
            "--issuer",
            issuer,
            "--log",
            str(self.request_log),
        ]
        for repo in repositories:
            argv += ["--repository", repo]
        for account, pulls in (budgets or {}).items():
            argv += ["--budget", f"{account}={pulls}"]
        if tls:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        super().__init__(argv, workdir / "token-service.log", cwd=REPO_ROOT)
        self.wait_for_port(self.port)

    def requests(self) -> list[dict[str, Any]]:
        """Every request logged so far (the log is written before the answer)."""
        lines = self.request_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def start_token_service(
    workdir: Path,
    service: str,
    issuer: str,
    repositories: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
) -> TokenService:
    """Start the token service as a subprocess; stop it with ``.stop()``."""
    return TokenService(workdir, service, issuer, repositories, tls)


if __name__ == "__main__":
    sys.exit(main())
