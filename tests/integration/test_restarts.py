"""Docxy restarted while its upstream is down or rate-limiting (a node
reboot, a rolling update, an OOM kill): every client pulls what it could
pull before, and private content still only reaches the credential that
was allowed it. What Docxy learned lives in the cache directory's ledger.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import at_once, every_client
from tests.support.docxy import Docxy, DocxyFactory
from tests.support.faulty import FaultyUpstream, start_faulty_upstream
from tests.support.images import ImageSpec
from tests.support.processes import wait_until
from tests.support.registry import basic_auth, fetch, parse_challenge
from tests.support.skopeo import skopeo_pull

WEB = ImageSpec("library/web", "1", layer_sizes=(100 * 1024,), seed="restart")
VAULT = ImageSpec("private/vault", "1", layer_sizes=(70 * 1024,), seed="restart-v")
ALICE = ("alice", "secret")


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[FaultyUpstream]:
    up = start_faulty_upstream(tmp_path / "upstream", [WEB, VAULT])
    try:
        yield up
    finally:
        up.stop()


def skopeo(docxy: Docxy, name: str, out: Path, *flags: str, check: bool = True) -> bool:
    return skopeo_pull(docxy.hostport, name, out, *flags, check=check).returncode == 0


def ledger_count(cache: Path, sql: str) -> int:
    """A count from the ledger, read as another process would."""
    with contextlib.closing(
        sqlite3.connect(f"file:{cache / 'ledger.sqlite'}?mode=ro", uri=True)
    ) as db:
        count: int = db.execute(sql).fetchone()[0]
        return count


def warm(docxy: Docxy, cache: Path, tmp_path: Path, faulty: FaultyUpstream) -> None:
    """web:1 anonymously, vault:1 as alice; then wait until it is all on disk."""
    skopeo(docxy, "web:1", tmp_path / "warm-web" / "out")
    skopeo(
        docxy,
        "private/vault:1",
        tmp_path / "warm-vault" / "out",
        "--src-creds",
        ":".join(ALICE),
    )
    docxy.wait_for_log("library/web is public")
    vault = faulty.images[VAULT.ref]
    # alice's grants: the manifest and each blob, each under her token's
    # key and her principal's.
    wanted = 2 * (len(vault.blobs) + 1)
    wait_until(
        lambda: (
            ledger_count(
                cache, "SELECT count(*) FROM grants WHERE repo = 'private/vault'"
            )
            >= wanted
            and ledger_count(cache, "SELECT count(*) FROM public") >= 1
        ),
        30,
        "the ledger to hold what Docxy learned",
    )


def restart(
    docxy: Docxy, factory: DocxyFactory, url: str, cache: Path, how: int
) -> Docxy:
    if how == signal.SIGKILL:
        docxy.kill()
        docxy.popen.wait(30)
    docxy.stop()
    return factory(url, "--cache-dir", str(cache))


def offline_token(docxy: Docxy, creds: tuple[str, str] | None) -> str:
    """The token a client gets from the realm of Docxy's (offline) ping."""
    ping = fetch(f"{docxy.url}/v2/")
    assert ping.status == 401, (ping.status, ping.body)
    _, params = parse_challenge(ping.header("WWW-Authenticate") or "")
    headers = {"Authorization": basic_auth(*creds)} if creds else {}
    answer = fetch(
        f"{params['realm']}?service={params['service']}"
        "&scope=repository:private/vault:pull",
        headers=headers,
    )
    assert answer.status == 200, answer.body
    token: str = answer.json()["token"]
    return token


def assert_refused(docxy: Docxy, faulty: FaultyUpstream, token: str) -> None:
    """Not one byte of vault for this token; the status says why."""
    vault = faulty.images[VAULT.ref]
    for path in (
        "/v2/private/vault/manifests/1",
        f"/v2/private/vault/manifests/{vault.digest}",
        *(f"/v2/private/vault/blobs/{blob}" for blob in vault.blobs),
    ):
        response = fetch(docxy.url + path, headers={"Authorization": f"Bearer {token}"})
        assert response.status in (429, 502), (path, response.status)
        assert response.json()["errors"][0]["code"] in (
            "TOOMANYREQUESTS",
            "UNAVAILABLE",
        )


@pytest.mark.parametrize(
    ("fault", "how"),
    [("down", signal.SIGKILL), ("429", signal.SIGTERM)],
    ids=["down-kill-9", "429-sigterm"],
)
def test_restarted_during_an_outage_serves_what_it_served_before(
    docxy_factory: DocxyFactory,
    faulty: FaultyUpstream,
    tmp_path: Path,
    fault: str,
    how: int,
) -> None:
    web = faulty.images[WEB.ref]
    cache = tmp_path / "cache"
    docxy = docxy_factory(faulty.url, "--cache-dir", str(cache))
    warm(docxy, cache, tmp_path, faulty)
    if fault == "down":
        faulty.go_down()
    else:
        faulty.rate_limit(3600)
    reached = len(faulty.requests())
    docxy = restart(docxy, docxy_factory, faulty.url, cache, how)

    # Public: by tag and by digest, anonymous.
    assert skopeo(docxy, "web:1", tmp_path / "after" / "out")
    assert skopeo(docxy, f"web@{web.digest}", tmp_path / "digest" / "out")
    # Private: alice, who was allowed before, with her credentials.
    assert skopeo(
        docxy,
        "private/vault:1",
        tmp_path / "alice" / "out",
        "--src-creds",
        ":".join(ALICE),
    )
    # Anyone else: nothing of vault, neither anonymous nor a wrong password.
    assert_refused(docxy, faulty, offline_token(docxy, None))
    assert_refused(docxy, faulty, offline_token(docxy, ("alice", "guess")))
    assert_refused(docxy, faulty, offline_token(docxy, ("mallory", "secret")))
    # A forged offline token naming alice's principal is no better.
    genuine = offline_token(docxy, ALICE)
    assert_refused(docxy, faulty, genuine[:-4] + "0000")
    assert "cache=offline" in docxy.log_text()
    assert faulty.requests()[reached:] == []  # nothing got through the fault


def test_every_client_pulls_after_a_restart_while_the_upstream_is_down(
    docxy_factory: DocxyFactory, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    web = faulty.images[WEB.ref]
    vault = faulty.images[VAULT.ref]
    cache = tmp_path / "cache"
    docxy = docxy_factory(faulty.url, "--cache-dir", str(cache))
    warm(docxy, cache, tmp_path, faulty)
    faulty.go_down()
    reached = len(faulty.requests())
    docxy = restart(docxy, docxy_factory, faulty.url, cache, signal.SIGKILL)
    with every_client(docxy.url, docxy.hostport) as clients:
        dockerd = clients.dockerd
        dockerd.set_hub_credentials(*ALICE)  # dockerd: alice, private too

        def by_dockerd() -> list[str]:
            dockerd.pull("library/web:1")
            dockerd.pull("private/vault:1")
            return [
                str(dockerd.inspect(ref)["RepoDigests"])
                for ref in ("library/web:1", "private/vault:1")
            ]

        def by_containerd() -> list[str]:
            ref = "docker.io/library/web:1"
            clients.containerd.pull("rs", ref)
            return [clients.containerd.image_digest("rs", ref)]

        def by_podman() -> list[str]:
            clients.podman.pull("docker.io/library/web:1")
            return [str(clients.podman.inspect("docker.io/library/web:1")["Digest"])]

        dockerd_saw, containerd_saw, podman_saw = at_once(
            by_dockerd, by_containerd, by_podman
        )
        assert web.digest in dockerd_saw[0] and vault.digest in dockerd_saw[1]
        assert containerd_saw == [web.digest]
        assert web.digest in podman_saw[0]
        # podman without credentials: vault is not for it.
        refused = clients.podman.pull("docker.io/private/vault:1", check=False)
        assert refused.returncode != 0
        assert faulty.requests()[reached:] == []


def test_the_ledger_keeps_no_credential_and_its_secret_is_private(
    docxy_factory: DocxyFactory, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    vault = faulty.images[VAULT.ref]
    cache = tmp_path / "cache"
    docxy = docxy_factory(faulty.url, "--cache-dir", str(cache))
    warm(docxy, cache, tmp_path, faulty)
    token = offline_token(docxy, ALICE)  # the upstream's: it is up
    assert not token.startswith("docxy-")
    got = fetch(
        f"{docxy.url}/v2/private/vault/manifests/{vault.digest}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert got.status == 200
    docxy.stop()
    assert (cache / "secret").stat().st_mode & 0o777 == 0o600
    raw = b"".join(
        path.read_bytes() for path in cache.glob("ledger.sqlite*") if path.is_file()
    )
    assert ledger_count(cache, "SELECT count(*) FROM tokens") >= 1
    for secret in (token, basic_auth(*ALICE), "alice", ALICE[1]):
        assert secret.encode() not in raw, secret
