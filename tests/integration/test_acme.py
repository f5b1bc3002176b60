"""HTTPS for Docxy: ``ssl:`` with files, and the ``acme:`` endpoint against pebble.

Why: mirrors are reached over HTTPS in real deployments, and an earlier
proxy's certificates failed to renew or were never reloaded. These tests
run the real ``twistd docxy`` against Debian's pebble, which really
validates TLS-ALPN-01 and HTTP-01 against Docxy's own listeners on
loopback, and clients that trust only pebble's root pull through Docxy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import tempfile
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support.certs_d import certs_d_entry
from tests.support.clients import DOCKER_CLI, DOCKERD, Dockerd
from tests.support.digests import sha256_digest
from tests.support.docxy import Docxy, run_docxy
from tests.support.pebble import PEBBLE, Pebble
from tests.support.processes import LOOPBACK, free_port, wait_until
from tests.support.registry import (
    Upstream,
    fetch,
    get_token,
    make_test_ca,
)
from tests.support.skopeo import assert_pulled, skopeo_pull

NAME = "localhost"
ALPINE = "library/alpine:3.20"


# --- helpers ----------------------------------------------------------------


def peer_cert(port: int, name: str = NAME) -> x509.Certificate:
    """The certificate served for SNI ``name`` (not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def trusted(port: int, root: Path, name: str = NAME) -> bool:
    """Does a client trusting only ``root`` accept what is served for ``name``?"""
    ctx = ssl.create_default_context(cafile=str(root))
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=10) as sock,
            ctx.wrap_socket(sock, server_hostname=name),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def skopeo_pull_https(
    port: int, root: Path, tmp_path: Path, upstream: Upstream, ref: str = ALPINE
) -> None:
    """skopeo, trusting only ``root`` (its cert dir), copies ``ref`` byte-exact."""
    certs = tmp_path / "skopeo-certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(root, certs / "ca.crt")
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    image = upstream.images[ref]
    at, name = f"{NAME}:{port}", ref.removeprefix("library/")
    skopeo_pull(at, name, out, "--src-cert-dir", str(certs), tls_verify=True)
    assert_pulled(out, image.blobs, manifest=image.digest)


class Setup:
    """Ports chosen up front: pebble must know where Docxy listens."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.plain = free_port()
        self.tls = free_port()
        self.state = tmp_path / "acme-state"
        self.pebbles: list[Pebble] = []
        self.docxys: list[Docxy] = []
        self.stopped: set[int] = set()

    def pebble(self, **kwargs: object) -> Pebble:
        if not Path(PEBBLE).exists():
            pytest.fail(f"{PEBBLE} is not installed (Debian package pebble)")
        p = Pebble(
            self.tmp / f"pebble-{len(self.pebbles)}",
            http_port=self.plain,
            tls_port=self.tls,
            **kwargs,  # type: ignore[arg-type]
        )
        self.pebbles.append(p)
        return p

    def root(self, pebble: Pebble) -> Path:
        return pebble.write_root(self.tmp / f"pebble-root-{pebble.pid}.pem")

    def acme_port(
        self,
        pebble: Pebble,
        challenge: str = "tls-alpn-01",
        domains: str = NAME,
    ) -> str:
        return (
            f"acme:{self.state}:tcp:{self.tls}:interface={LOOPBACK}"
            f":domains={domains}:directory={pebble.directory_option}"
            f":caBundle={pebble.api_ca}:challenge={challenge}:retry=1"
        )

    def docxy(self, upstream: Upstream, port: str, workers: int = 1) -> Docxy:
        d = Docxy(
            upstream.url,
            self.tmp / f"docxy-{len(self.docxys)}.log",
            [
                *("--port", port, "--public-url", f"https://{NAME}:{self.tls}"),
                *("--workers", str(workers)),
            ],
            port=self.plain,
        )
        self.docxys.append(d)
        d.wait_for_port(self.tls)
        return d

    def stop(self, d: Docxy) -> None:
        """A deliberate stop (restart tests), not a crash."""
        self.stopped.add(d.pid)
        d.stop()

    def close(self) -> list[str]:
        died = [
            f"docxy pid {d.pid} died:\n{d.log_text()[-3000:]}"
            for d in self.docxys
            if d.pid not in self.stopped and not d.alive()
        ]
        for d in self.docxys:
            d.stop()
        for p in self.pebbles:
            p.stop()
        return died


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        died = s.close()
    assert not died, "\n".join(died)


def served_serial(port: int, name: str = NAME) -> int:
    return peer_cert(port, name).serial_number


# --- ssl: with files ------------------------------------------------------------


def test_ssl_endpoint_with_certificate_files(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Twisted's own ``ssl:`` string: /health and a skopeo pull over https,
    HTTP/1.1 only by ALPN, TLS 1.1 refused."""
    ca, cert, key = make_test_ca(tmp_path / "pki")
    tls = free_port()
    d = Docxy(
        upstream.url,
        tmp_path / "docxy.log",
        [
            "--port",
            f"ssl:{tls}:interface={LOOPBACK}:privateKey={key}:certKey={cert}",
            "--public-url",
            f"https://{NAME}:{tls}",
        ],
    )
    try:
        d.wait_for_port(tls)
        health = fetch(f"https://{NAME}:{tls}/health", ca_path=ca)
        assert health.status == 200, health
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection((LOOPBACK, tls), timeout=10) as sock,
            ctx.wrap_socket(sock, server_hostname=NAME) as conn,
        ):
            assert conn.selected_alpn_protocol() == "http/1.1"
        old = ssl.create_default_context(cafile=str(ca))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection((LOOPBACK, tls), timeout=10) as sock,
            old.wrap_socket(sock, server_hostname=NAME),
        ):
            pass
        skopeo_pull_https(tls, ca, tmp_path, upstream)
        assert d.alive()
    finally:
        d.stop()


# --- acme: issuance with real validation ---------------------------------------


def test_tls_alpn_01_issuance_then_https_pull(
    setup: Setup, upstream: Upstream, tmp_path: Path
) -> None:
    """Pebble validates TLS-ALPN-01 on the TLS listener itself; skopeo,
    trusting only pebble's root, then pulls through it."""
    pebble = setup.pebble()
    d = setup.docxy(upstream, setup.acme_port(pebble))
    root = setup.root(pebble)

    wait_until(lambda: trusted(setup.tls, root), 30, "a pebble certificate")

    assert "answering a TLS-ALPN-01 challenge for localhost" in d.log_text()
    assert "set VALID by completed challenge" in pebble.log_text()
    assert "/.well-known/acme-challenge/" not in d.log_text()
    assert sans(peer_cert(setup.tls)) == [NAME]
    assert mode(setup.state) == 0o700
    assert mode(setup.state / "account.key") == 0o600
    challenges = setup.state / "challenges"  # published for workers, 0700
    assert mode(challenges) == 0o700 and not list(challenges.iterdir())
    (certs,) = [p for p in setup.state.iterdir() if p.is_dir() and p != challenges]
    assert mode(certs) == 0o700
    assert mode(certs / f"{NAME}.pem") == 0o600
    skopeo_pull_https(setup.tls, root, tmp_path, upstream)


def test_http_01_issuance_on_the_plain_listener(
    setup: Setup, upstream: Upstream
) -> None:
    """Pebble fetches the HTTP-01 token from Docxy's plain listener; a client
    trusting only pebble's root then gets a manifest over https."""
    pebble = setup.pebble()
    d = setup.docxy(upstream, setup.acme_port(pebble, challenge="http-01"))
    root = setup.root(pebble)

    wait_until(lambda: trusted(setup.tls, root), 30, "a pebble certificate")

    log = d.log_text()
    assert "method=GET path=/.well-known/acme-challenge/" in log
    assert "status=200" in log.split("/.well-known/acme-challenge/", 1)[1]
    assert "answering a TLS-ALPN-01 challenge" not in log
    assert "set VALID by completed challenge" in pebble.log_text()
    base = f"https://{NAME}:{setup.tls}"
    token = get_token(
        f"{base}/auth/token",
        upstream.service,
        ["repository:library/alpine:pull"],
        ca_path=root,
    )
    image = upstream.images[ALPINE]
    resp = fetch(
        f"{base}/v2/library/alpine/manifests/3.20",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.docker.distribution.manifest.v2+json",
        },
        ca_path=root,
    )
    assert resp.status == 200, resp
    assert sha256_digest(resp.body) == image.digest


def test_each_sni_name_gets_its_own_certificate(
    setup: Setup, upstream: Upstream
) -> None:
    """Several names, one certificate each; an unknown SNI name gets the
    first name's certificate and is never ordered."""
    pebble = setup.pebble(always_valid=True)  # only localhost resolves here
    names = [NAME, "mirror.test", "cache.test"]
    setup.docxy(upstream, setup.acme_port(pebble, domains=",".join(names)))
    root = setup.root(pebble)

    for name in names:
        wait_until(partial(trusted, setup.tls, root, name), 30, f"cert for {name}")
    certs = {name: peer_cert(setup.tls, name) for name in names}
    for name, cert in certs.items():
        assert sans(cert) == [name]
    assert len({c.serial_number for c in certs.values()}) == 3
    stranger = peer_cert(setup.tls, "evil.test")
    assert stranger.serial_number == certs[NAME].serial_number
    assert pebble.new_orders() == 3
    assert not list(setup.state.glob("*/evil.test.pem"))
    assert len(list(setup.state.glob("*/*.pem"))) == 3


# --- workers: one manager in the supervisor ---------------------------------

FOLLOWED = "serving the certificate the supervisor stored for localhost"


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_workers_share_one_order_and_answer_its_challenge(
    setup: Setup, upstream: Upstream, challenge: str
) -> None:
    """With --workers 2 the supervisor orders once; the CA's validation
    reaches a worker (the supervisor accepts no connection), which answers
    from what the supervisor published; both workers then serve the
    issued certificate."""
    pebble = setup.pebble()
    d = setup.docxy(upstream, setup.acme_port(pebble, challenge=challenge), 2)
    root = setup.root(pebble)

    wait_until(lambda: trusted(setup.tls, root), 30, "a pebble certificate")
    wait_until(lambda: d.log_text().count(FOLLOWED) == 2, 30, "both workers")

    log = d.log_text()
    assert "supervisor: 2 workers share" in log
    assert "set VALID by completed challenge" in pebble.log_text()
    if challenge == "tls-alpn-01":
        assert "answering a TLS-ALPN-01 challenge for localhost" in log
    else:
        assert "path=/.well-known/acme-challenge/" in log
        assert "status=200" in log.split("/.well-known/acme-challenge/", 1)[1]
    assert pebble.new_orders() == 1  # can fail: a manager per worker
    assert log.count("new certificate in service for localhost") == 1
    assert not list((setup.state / "challenges").iterdir())
    serials = {served_serial(setup.tls) for _ in range(12)}
    assert len(serials) == 1


def test_a_restarted_worker_serves_the_stored_certificate(
    setup: Setup, upstream: Upstream
) -> None:
    """A worker killed after the issue comes back serving the certificate
    the supervisor stored, not the placeholder, and orders nothing."""
    pebble = setup.pebble()
    d = setup.docxy(upstream, setup.acme_port(pebble), 2)
    root = setup.root(pebble)
    wait_until(lambda: d.log_text().count(FOLLOWED) == 2, 30, "both workers")
    pids = [
        int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", d.log_text())
    ]
    assert len(pids) == 2, d.log_text()
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: d.log_text().count(FOLLOWED) == 3, 30, "the new worker")
    assert all(trusted(setup.tls, root) for _ in range(12))
    assert pebble.new_orders() == 1


def test_workers_all_serve_a_renewal(setup: Setup, upstream: Upstream) -> None:
    """The supervisor renews; every worker serves the new certificate."""
    pebble = setup.pebble(validity=9)  # renewal due after ~6 s
    d = setup.docxy(upstream, setup.acme_port(pebble), 2)
    root = setup.root(pebble)
    wait_until(lambda: d.log_text().count(FOLLOWED) == 2, 30, "the first certificate")
    first = served_serial(setup.tls)
    wait_until(lambda: d.log_text().count(FOLLOWED) >= 4, 60, "the renewal in both")
    assert served_serial(setup.tls) != first
    assert all(served_serial(setup.tls) != first for _ in range(12))
    assert trusted(setup.tls, root)
    assert d.alive()


# --- renewal, restart, outage -------------------------------------------------


def test_renewal_hot_swaps_without_dropping_a_transfer(
    setup: Setup, upstream: Upstream
) -> None:
    """A short lifetime forces renewal; the running listener serves the new
    serial while a transfer that started before the swap completes."""
    pebble = setup.pebble(validity=9)  # renewal due after ~6 s
    d = setup.docxy(upstream, setup.acme_port(pebble))
    root = setup.root(pebble)
    wait_until(lambda: trusted(setup.tls, root), 30, "the first certificate")
    first = served_serial(setup.tls)

    image = upstream.images[ALPINE]
    blob = max(image.blobs, key=lambda b: len(upstream.blob_bytes(image.repo, b)))
    expected = upstream.blob_bytes(image.repo, blob)
    token = get_token(
        f"https://{NAME}:{setup.tls}/auth/token",
        upstream.service,
        ["repository:library/alpine:pull"],
        ca_path=root,
    )
    ctx = ssl.create_default_context(cafile=str(root))
    conn = http.client.HTTPSConnection(NAME, setup.tls, timeout=30, context=ctx)
    try:
        path = f"/v2/library/alpine/blobs/{blob}"
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        head = resp.read(16 * 1024)
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        assert x509.load_der_x509_certificate(der).serial_number == first

        wait_until(lambda: served_serial(setup.tls) != first, 30, "a renewed cert")
        assert trusted(setup.tls, root)

        rest = resp.read()
        assert head + rest == expected
        # The same (old-certificate) connection still serves requests.
        conn.request("HEAD", path, headers={"Authorization": f"Bearer {token}"})
        again = conn.getresponse()
        again.read()
        assert again.status == 200
    finally:
        conn.close()
    assert d.alive()
    assert d.log_text().count("new certificate in service for localhost") >= 2
    assert pebble.new_orders() >= 2


def test_failed_renewal_keeps_the_current_certificate(
    setup: Setup, upstream: Upstream
) -> None:
    """The CA gone at renewal time: Docxy logs it, keeps serving, retries."""
    pebble = setup.pebble(validity=9)  # renewal due after ~6 s
    d = setup.docxy(upstream, setup.acme_port(pebble))
    root = setup.root(pebble)
    wait_until(lambda: trusted(setup.tls, root), 30, "the first certificate")
    first = served_serial(setup.tls)
    pebble.stop()

    d.wait_for_log("still serving the current certificate (serial")
    assert served_serial(setup.tls) == first
    assert d.alive()
    d.wait_for_log("next try in 2s")  # and it keeps trying, backing off
    assert fetch(f"{d.url}/health").status == 200


def test_restart_reuses_account_and_certificate(
    setup: Setup, upstream: Upstream
) -> None:
    """A restart serves the stored certificate at once and orders nothing;
    a missing certificate is re-ordered with the stored account."""
    pebble = setup.pebble()
    port = setup.acme_port(pebble)
    first = setup.docxy(upstream, port)
    root = setup.root(pebble)
    wait_until(lambda: trusted(setup.tls, root), 30, "a pebble certificate")
    serial = served_serial(setup.tls)
    account_key = (setup.state / "account.key").read_bytes()
    assert pebble.new_orders() == 1
    setup.stop(first)

    second = setup.docxy(upstream, port)
    assert served_serial(setup.tls) == serial  # from the first handshake on
    assert trusted(setup.tls, root)
    second.wait_for_log("certificate for localhost (serial")
    assert "is good; renewal due" in second.log_text()
    assert pebble.new_orders() == 1
    setup.stop(second)

    (pem,) = setup.state.glob(f"*/{NAME}.pem")
    pem.unlink()
    third = setup.docxy(upstream, port)
    wait_until(
        lambda: trusted(setup.tls, root) and served_serial(setup.tls) != serial,
        30,
        "a new certificate",
    )
    assert pebble.new_orders() == 2
    assert "There are now 2 accounts" not in pebble.log_text()
    assert (setup.state / "account.key").read_bytes() == account_key
    assert "created a new ACME account key" not in third.log_text()


def test_acme_server_down_at_startup(setup: Setup, upstream: Upstream) -> None:
    """Docxy listens at once with the placeholder, retries, and gets the
    certificate once the ACME server comes up."""
    pebble_dir = setup.tmp / "pebble-late"
    if not Path(PEBBLE).exists():
        pytest.fail(f"{PEBBLE} is not installed (Debian package pebble)")
    make_test_ca(pebble_dir / "api-pki")
    pebble_port, mgmt_port = free_port(), free_port()
    directory = f"https\\://{LOOPBACK}\\:{pebble_port}/dir"
    port = (
        f"acme:{setup.state}:tcp:{setup.tls}:interface={LOOPBACK}:domains={NAME}"
        f":directory={directory}:caBundle={pebble_dir / 'api-pki' / 'ca.crt'}:retry=1"
    )
    d = setup.docxy(upstream, port)
    d.wait_for_log("still serving the self-signed placeholder")
    assert common_name(peer_cert(setup.tls)).startswith("Docxy placeholder")
    assert d.alive()

    pebble = Pebble(
        pebble_dir,
        http_port=setup.plain,
        tls_port=setup.tls,
        port=pebble_port,
        mgmt_port=mgmt_port,
    )
    setup.pebbles.append(pebble)
    root = setup.root(pebble)
    wait_until(lambda: trusted(setup.tls, root), 30, "the certificate after the outage")


# --- dockerd ------------------------------------------------------------------


def docker_certs_d(hostport: str, ca: Path) -> contextlib.AbstractContextManager[Path]:
    """dockerd 20.10 has no flag for certs.d: create only our HOST:PORT dir."""
    return certs_d_entry(Path("/etc/docker/certs.d"), hostport, ca)


@contextlib.contextmanager
def short_base() -> Iterator[Path]:
    """dockerd's unix sockets (108-byte limit) need a short private dir."""
    base = Path(tempfile.mkdtemp(prefix="docxy-acme-dockerd-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dockerd needs root")
def test_dockerd_pulls_over_https(setup: Setup, upstream: Upstream) -> None:
    """registry-mirrors = the https URL, pebble's root in certs.d.

    dockerd counts every mirror resolving into 127.0.0.0/8 as insecure and
    then skips verification (it does not even read certs.d), so this shows
    the https path works end to end; trust is shown by the other tests.
    """
    for binary in (DOCKERD, DOCKER_CLI):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is not installed")
    pebble = setup.pebble()
    d = setup.docxy(upstream, setup.acme_port(pebble))
    root = setup.root(pebble)
    wait_until(lambda: trusted(setup.tls, root), 30, "a pebble certificate")
    image = upstream.images[ALPINE]

    with docker_certs_d(f"{NAME}:{setup.tls}", root), short_base() as base:
        daemon = Dockerd(base, [f"https://{NAME}:{setup.tls}"])
        try:
            daemon.pull(ALPINE)
            info = daemon.inspect(ALPINE)
        finally:
            daemon.stop()

    digests = info["RepoDigests"]
    assert any(r.endswith(f"@{image.digest}") for r in digests), digests
    log = d.log_text()
    assert "method=GET path=/v2/library/alpine/manifests/" in log
    assert "method=GET path=/v2/library/alpine/blobs/sha256:" in log


# --- start-up validation --------------------------------------------------------


def test_bad_acme_string_stops_twistd_with_one_line(tmp_path: Path) -> None:
    result = run_docxy(
        *("--port", f"acme:{tmp_path}:tcp:{free_port()}:domains=*.example.com"),
        *("--public-url", "https://mirror.example.com"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("docxy: configuration error: port: invalid endpoint")
    assert "wildcard names need DNS-01" in lines[0]
