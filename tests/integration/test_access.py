"""Accounts and access against the real registry and token service, with real
clients: the mirror's upstream account, Docxy's own accounts, allow-lists."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import upstream_over
from tests.support.clients import (
    Containerd,
    Dockerd,
    Podman,
)
from tests.support.daemons import (
    containerd_through,
    dockerd_through,
    podman_through,
)
from tests.support.docxy import (
    Docxy,
    DocxyFactory,
    prefetch,
    run_docxy,
)
from tests.support.metrics import scrape
from tests.support.processes import free_port
from tests.support.registry import (
    Upstream,
    basic_auth,
    challenge,
    fetch,
)
from tests.support.skopeo import assert_pulled, skopeo_pull

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the daemons need root")

PRIVATE = "private/secret:1"


def password_file(tmp_path: Path, secret: str = "secret") -> Path:
    path = tmp_path / "upstream-password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_anonymous_clients_pull_private_images_of_the_mirrors_account(
    upstream: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    docxy = docxy_factory(
        upstream.url,
        "--upstream-username",
        "alice",
        "--upstream-password-file",
        str(password_file(tmp_path)),
    )
    before = len(upstream.token_requests())
    for attempt in range(2):
        skopeo_pull(docxy.hostport, PRIVATE, tmp_path / f"pull-{attempt}" / "out")
    asked = upstream.token_requests()[before:]
    assert asked, "Docxy asked the token service"
    assert {entry["user"] for entry in asked} == {"alice"}
    # One token per scope, shared by both pulls (the second costs no round trip).
    scopes = [tuple(v for k, v in entry["params"] if k == "scope") for entry in asked]
    assert len(scopes) == len(set(scopes)), asked
    log = docxy.log_text()
    assert base64.b64encode(b"alice:secret").decode() not in log
    assert "account alice" in log


# --- Docxy's own accounts, with real clients ---------------------------------

MIRROR_USER, MIRROR_PASSWORD = "carol", "mirror-pass"


@pytest.fixture(scope="module")
def accounts_docxy(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Docxy]:
    """Docxy with an htpasswd (carol) and alice's account upstream.

    carol is no user of the upstream: a pull only works if Docxy checked her
    at its own realm and pulled with its own upstream tokens.
    """
    workdir = tmp_path_factory.mktemp("accounts")
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(MIRROR_PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    htpasswd.write_text(f"{MIRROR_USER}:{hashed.decode()}\n")
    docxy = Docxy(
        upstream.url,
        workdir / "docxy.log",
        [
            "--htpasswd",
            str(htpasswd),
            "--upstream-username",
            "alice",
            "--upstream-password-file",
            str(password_file(workdir)),
            "--token-key-file",
            str(workdir / "token.key"),
        ],
    )
    try:
        yield docxy
    finally:
        docxy.stop()


def mirror_auth_file(directory: Path, hostport: str, password: str) -> None:
    """The auth file skopeo reads (REGISTRY_AUTH_FILE of skopeo_env)."""
    home = directory / "skopeo-home"
    home.mkdir(parents=True, exist_ok=True)
    pair = base64.b64encode(f"{MIRROR_USER}:{password}".encode()).decode()
    (home / "auth.json").write_text(json.dumps({"auths": {hostport: {"auth": pair}}}))


def test_skopeo_pulls_with_its_mirror_account_from_the_auth_file(
    accounts_docxy: Docxy, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images[PRIVATE]
    mirror_auth_file(tmp_path / "ok", accounts_docxy.hostport, MIRROR_PASSWORD)
    skopeo_pull(accounts_docxy.hostport, PRIVATE, tmp_path / "ok" / "out")
    assert_pulled(tmp_path / "ok" / "out", image.blobs, image.digest)
    log = accounts_docxy.log_text()
    assert MIRROR_PASSWORD not in log
    assert base64.b64encode(b"alice:secret").decode() not in log


@pytest.mark.parametrize("password", [None, "wrong"])
def test_skopeo_without_the_right_mirror_password_is_refused(
    accounts_docxy: Docxy, tmp_path: Path, password: str | None
) -> None:
    if password is not None:
        mirror_auth_file(tmp_path, accounts_docxy.hostport, password)
    result = skopeo_pull(
        accounts_docxy.hostport, PRIVATE, tmp_path / "out", check=False
    )
    assert result.returncode != 0
    assert "401" in result.stderr or "unauthorized" in result.stderr.lower(), (
        result.stderr
    )


def test_wrong_or_missing_credentials_get_401_with_a_challenge(
    accounts_docxy: Docxy,
) -> None:
    reply = fetch(f"{accounts_docxy.url}/v2/private/secret/manifests/1")
    assert reply.status == 401
    assert challenge(reply)["realm"] == f"{accounts_docxy.url}/auth/docker.io/token"
    assert reply.json()["errors"][0]["code"] == "UNAUTHORIZED"
    token = fetch(
        f"{accounts_docxy.url}/auth/token?scope=repository:private/secret:pull",
        headers={"Authorization": basic_auth(MIRROR_USER, "wrong")},
    )
    assert token.status == 401
    assert token.header("www-authenticate") == 'Basic realm="docxy"'


def test_docxy_prefetch_warms_with_a_mirror_account(accounts_docxy: Docxy) -> None:
    without = prefetch(accounts_docxy, PRIVATE)
    assert without.returncode != 0
    result = prefetch(
        accounts_docxy,
        PRIVATE,
        DOCXY_PREFETCH_USER=f"{MIRROR_USER}:{MIRROR_PASSWORD}",
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def podman(
    accounts_docxy: Docxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Podman]:
    yield from podman_through(tmp_path_factory, "pod-acc", accounts_docxy.hostport)


@needs_root
def test_podman_pulls_with_the_auth_file_entry_for_the_mirror(
    podman: Podman, accounts_docxy: Docxy, upstream: Upstream
) -> None:
    image = upstream.images[PRIVATE]
    podman.set_credentials(accounts_docxy.hostport, None)
    denied = podman.pull(f"docker.io/{PRIVATE}", check=False)
    assert denied.returncode != 0
    podman.set_credentials(accounts_docxy.hostport, MIRROR_USER, MIRROR_PASSWORD)
    try:
        podman.pull(f"docker.io/{PRIVATE}")
    finally:
        podman.set_credentials(accounts_docxy.hostport, None)
    assert image.digest in json.dumps(podman.inspect(f"docker.io/{PRIVATE}"))


@pytest.fixture(scope="module")
def containerd(
    accounts_docxy: Docxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd]:
    yield from containerd_through(tmp_path_factory, "ctr-acc", accounts_docxy.url)


@needs_root
def test_containerd_ctr_pulls_with_user_through_hosts_toml(
    containerd: Containerd, upstream: Upstream
) -> None:
    image = upstream.images[PRIVATE]
    denied = containerd.pull("accounts", f"docker.io/{PRIVATE}", check=False)
    assert denied.returncode != 0
    containerd.pull(
        "accounts", f"docker.io/{PRIVATE}", user=f"{MIRROR_USER}:{MIRROR_PASSWORD}"
    )
    assert containerd.image_digest("accounts", f"docker.io/{PRIVATE}") == image.digest


@pytest.fixture(scope="module")
def dockerd(
    accounts_docxy: Docxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dockerd]:
    yield from dockerd_through(tmp_path_factory, "dkr-acc", accounts_docxy.url)


@needs_root
def test_dockerd_pulls_with_the_mirror_account_as_its_hub_login(
    dockerd: Dockerd, upstream: Upstream
) -> None:
    image = upstream.images[PRIVATE]
    dockerd.remove(PRIVATE)
    try:
        dockerd.set_hub_credentials(MIRROR_USER, "wrong")
        denied = dockerd.pull(PRIVATE, check=False)
        assert denied.returncode != 0
        dockerd.set_hub_credentials(MIRROR_USER, MIRROR_PASSWORD)
        dockerd.pull(PRIVATE)
    finally:
        dockerd.set_hub_credentials(None)
    assert image.digest in json.dumps(dockerd.inspect(PRIVATE)["RepoDigests"])


# --- the pull budget ----------------------------------------------------------


@pytest.fixture
def budgeted(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upstream]:
    """The session's images behind a token service with pull budgets:
    alice may pull once, each anonymous address five times."""
    yield from upstream_over(
        upstream,
        tmp_path_factory.mktemp("budgeted"),
        budgets={"alice": 1, "anonymous": 5},
    )


def test_the_budget_counts_the_mirrors_account_and_a_spent_one_is_not_hammered(
    budgeted: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    metrics_port = free_port()
    docxy = docxy_factory(
        budgeted.url,
        "--upstream-username",
        "alice",
        "--upstream-password-file",
        str(password_file(tmp_path)),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--metrics-port",
        f"tcp:{metrics_port}:interface=127.0.0.1",
    )
    image = budgeted.images[PRIVATE]
    skopeo_pull(docxy.hostport, PRIVATE, tmp_path / "first" / "out")
    asked = budgeted.token_requests()
    assert [(e["user"], e["status"]) for e in asked] == [("alice", 200)], asked
    budget = (("account", "alice"), ("upstream", "docker.io"))
    found = scrape(metrics_port)
    assert found[("docxy_upstream_ratelimit_remaining", budget)] == 0
    assert found[("docxy_upstream_ratelimit_limit", budget)] == 1
    docxy.wait_for_log("pull budget of docker.io for alice: 0 of 1 left")

    # Spent: an uncached image gets Docker Hub's 429, in the envelope, and
    # every retry is answered by Docxy without asking upstream again.
    for _ in range(3):
        reply = fetch(f"{docxy.url}/v2/library/alpine/manifests/3.20")
        assert reply.status == 429
        assert reply.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert int(reply.header("retry-after") or 0) > 3500
    refused = [e for e in budgeted.token_requests() if e["status"] == 429]
    assert len(refused) == 1, budgeted.token_requests()

    # What is cached keeps flowing.
    skopeo_pull(docxy.hostport, PRIVATE, tmp_path / "again" / "out")
    assert_pulled(tmp_path / "again" / "out", image.blobs, image.digest)
    assert len(budgeted.token_requests()) == 2


def test_with_the_cache_a_token_for_one_repository_opens_no_cached_other(
    upstream: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(MIRROR_PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    htpasswd.write_text(f"{MIRROR_USER}:{hashed.decode()}\n")
    docxy = docxy_factory(
        upstream.url,
        "--htpasswd",
        str(htpasswd),
        "--upstream-username",
        "alice",
        "--upstream-password-file",
        str(password_file(tmp_path)),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    image = upstream.images[PRIVATE]
    for attempt in ("cold", "warm"):
        mirror_auth_file(tmp_path / attempt, docxy.hostport, MIRROR_PASSWORD)
        skopeo_pull(docxy.hostport, PRIVATE, tmp_path / attempt / "out")
        assert_pulled(tmp_path / attempt / "out", image.blobs, image.digest)
    assert "cache=hit" in docxy.log_text()

    login = {"Authorization": basic_auth(MIRROR_USER, MIRROR_PASSWORD)}
    answer = fetch(
        f"{docxy.url}/auth/token?scope=repository:library/alpine:pull", headers=login
    )
    assert answer.status == 200
    other = {"Authorization": f"Bearer {answer.json()['token']}"}
    for path in (
        f"/v2/private/secret/manifests/{image.digest}",
        f"/v2/private/secret/blobs/{image.blobs[0]}",
    ):
        reply = fetch(docxy.url + path, headers=other)
        assert reply.status == 401, path
        assert challenge(reply).get("error") == "insufficient_scope"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    alpine = fetch(
        f"{docxy.url}/v2/library/alpine/manifests/3.20",
        headers={**other, "Accept": accept},
    )
    assert alpine.status == 200


@pytest.mark.parametrize(
    ("setup", "args", "reason"),
    [
        ("md5", ["--htpasswd", "FILE"], "not user:bcrypt-hash"),
        ("none", ["--upstream-username", "alice"], "needs upstream-password-file"),
        ("none", ["--allow", "10.0.0.0/33"], "not an address or CIDR block"),
        ("short", ["--htpasswd", "HT", "--token-key-file", "FILE"], "fewer than"),
    ],
)
def test_bad_access_configuration_is_one_line_and_nothing_listens(
    tmp_path: Path, setup: str, args: list[str], reason: str
) -> None:
    path = tmp_path / "file"
    if setup == "md5":
        path.write_text("alice:$apr1$abc$0123456789abcdefghijkl\n")
    elif setup == "short":
        path.write_text("abcd\n")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"a:{bcrypt.hashpw(b'p', bcrypt.gensalt(4)).decode()}\n")
    args = [{"FILE": str(path), "HT": str(htpasswd)}.get(a, a) for a in args]
    port = free_port()
    result = run_docxy(
        *("--port", f"tcp:{port}:interface=127.0.0.1", "--no-cache", *args),
        cwd=tmp_path,
        # One process, as every Docxy of the tests (conftest): with workers
        # a missing token-key-file would be named before the bad file.
        env={"DOCXY_WORKERS": "1"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docxy: configuration error: ")
    assert reason in lines[0], lines[0]


def test_replicas_sharing_a_token_key_file_accept_each_others_tokens(
    upstream: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(MIRROR_PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    htpasswd.write_text(f"{MIRROR_USER}:{hashed.decode()}\n")
    shared = ["--htpasswd", str(htpasswd), "--token-key-file", str(tmp_path / "k")]
    first = docxy_factory(upstream.url, *shared)
    second = docxy_factory(upstream.url, *shared)
    alone = docxy_factory(
        upstream.url,
        "--htpasswd",
        str(htpasswd),
        "--token-key-file",
        str(tmp_path / "o"),
    )
    login = {"Authorization": basic_auth(MIRROR_USER, MIRROR_PASSWORD)}
    answer = fetch(
        f"{first.url}/auth/token?scope=repository:library/alpine:pull", headers=login
    )
    token = {
        "Authorization": f"Bearer {answer.json()['token']}",
        "Accept": "application/vnd.docker.distribution.manifest.v2+json",
    }
    path = "/v2/library/alpine/manifests/3.20"
    assert fetch(second.url + path, headers=token).status == 200
    assert fetch(alone.url + path, headers=token).status == 401


def test_a_node_tier_logs_in_to_a_regional_tier_with_accounts(
    upstream: Upstream, docxy_factory: DocxyFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(MIRROR_PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    htpasswd.write_text(f"{MIRROR_USER}:{hashed.decode()}\n")
    regional = docxy_factory(upstream.url, "--htpasswd", str(htpasswd))
    secret = tmp_path / "regional-password"
    secret.write_text(MIRROR_PASSWORD + "\n")
    node = docxy_factory(
        regional.url,
        "--upstream-username",
        MIRROR_USER,
        "--upstream-password-file",
        str(secret),
    )
    image = upstream.images["library/alpine:3.20"]
    skopeo_pull(node.hostport, "library/alpine:3.20", tmp_path / "out")
    assert_pulled(tmp_path / "out", image.blobs, image.digest)
    assert f"account={MIRROR_USER}" in regional.log_text()
