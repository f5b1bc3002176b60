"""Docxy's container image, built by deploy/image/build.sh and run with podman.

Why: the image is how Docxy runs on Kubernetes nodes. Only the real build
(a Debian base made by mmdebstrap, ``podman build --pull=never`` of the
Containerfile) and the real container in front of the real registry show
that it starts as configured (DOCXY_* variables, a TOML file, arguments),
serves real clients with the right digests, caches into its volume, answers
its HEALTHCHECK and stops cleanly on SIGTERM. The image is built once per
session (tests/integration/conftest.py); test_kubernetes.py runs it as the
manifests do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import PODMAN, Podman
from tests.support.daemons import running
from tests.support.digests import file_digest
from tests.support.engine import (
    DOCXY_UID,
    NEEDS_ENGINE,
    Engine,
    unique,
)
from tests.support.processes import LOOPBACK, free_port
from tests.support.registry import Upstream, fetch
from tests.support.skopeo import assert_pulled, skopeo_pull

pytestmark = NEEDS_ENGINE


class Mirror:
    """A Docxy container on 127.0.0.1:port."""

    def __init__(self, engine: Engine, name: str, port: int) -> None:
        self.engine, self.name, self.port = engine, name, port
        self.hostport = f"{LOOPBACK}:{port}"
        self.url = f"http://{self.hostport}"


@pytest.fixture(scope="module")
def cache_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory as the cache volume, owned by the image's user."""
    path = tmp_path_factory.mktemp("container-cache")
    os.chown(path, DOCXY_UID, DOCXY_UID)
    return path


@pytest.fixture(scope="module")
def mirror(
    engine: Engine, image: str, upstream: Upstream, cache_volume: Path
) -> Iterator[Mirror]:
    """Configured only by DOCXY_* variables, the cache a bind-mounted volume."""
    port = free_port()
    name = unique("docxy-image-test")
    engine.start(
        name,
        image,
        env={
            "DOCXY_PORT": f"tcp:{port}:interface={LOOPBACK}",
            "DOCXY_PUBLIC_URL": f"http://{LOOPBACK}:{port}",
            "DOCXY_UPSTREAM": upstream.url,
            "DOCXY_LIBRARY_PREFIX": "on",
        },
        volumes=[f"{cache_volume}:/var/cache/docxy"],
    )
    try:
        engine.wait_for_port(name, port)
        yield Mirror(engine, name, port)
        assert engine.state(name)["Running"], engine.logs(name)
    finally:
        engine.remove(name)


@pytest.fixture
def podman_client(
    mirror: Mirror, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Podman]:
    def start(base: Path) -> Podman:
        return Podman(base, mirror.hostport)

    yield from running(tmp_path_factory, "podman", [PODMAN], start)


# --- the image --------------------------------------------------------------


def test_image_is_non_root_with_a_cache_volume_and_a_healthcheck(
    engine: Engine, image: str
) -> None:
    config = engine.inspect_image(image)["Config"]
    assert config["User"] == "docxy:docxy"
    assert "/var/cache/docxy" in config["Volumes"]
    assert config["Entrypoint"][:4] == [
        "/opt/docxy/bin/twistd",
        "--nodaemon",
        "--pidfile=",
        "--logfile=-",
    ]
    assert config["Entrypoint"][-1] == "docxy"
    assert config["StopSignal"] in ("SIGTERM", "15")
    assert "DOCXY_CONFIG=/etc/docxy/docxy.toml" in config["Env"]
    health = engine.podman(
        "image", "inspect", "--format", "{{json .HealthCheck}}", image
    ).stdout
    assert "healthcheck.py" in health, health
    result = engine.podman(
        "run", "--rm", "--network", "none", "--entrypoint", "id", image
    )
    assert result.stdout.startswith(f"uid={DOCXY_UID}(docxy) gid={DOCXY_UID}(docxy)")


# --- a running container ----------------------------------------------------


def test_skopeo_pulls_through_the_container(
    mirror: Mirror, upstream: Upstream, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    out = tmp_path / "alpine"
    skopeo_pull(mirror.hostport, "library/alpine:3.20", out)
    assert_pulled(out, image.blobs, manifest=image.digest)

    index = upstream.images["library/multi:1.0"]
    out = tmp_path / "multi"
    skopeo_pull(mirror.hostport, "library/multi:1.0", out, "--all")
    assert file_digest(out / "manifest.json") == index.digest
    for digest in index.platform_digests.values():
        instance = out / (digest.split(":", 1)[1] + ".manifest.json")
        assert file_digest(instance) == digest


def test_podman_pulls_through_the_container(
    mirror: Mirror, podman_client: Podman, upstream: Upstream
) -> None:
    for ref in ("library/alpine:3.20", "someuser/tool:latest"):
        image = upstream.images[ref]
        podman_client.pull(f"docker.io/{ref}")
        info = podman_client.inspect(f"docker.io/{ref}")
        assert info["Digest"] == image.digest
        assert f"docker.io/{image.repo}@{image.digest}" in info["RepoDigests"]


def test_blobs_are_cached_in_the_volume(
    mirror: Mirror, upstream: Upstream, cache_volume: Path, tmp_path: Path
) -> None:
    image = upstream.images["library/alpine:3.20"]
    skopeo_pull(mirror.hostport, "library/alpine:3.20", tmp_path / "alpine")
    cached = {
        file_digest(path)
        for path in cache_volume.rglob("*")
        if path.is_file() and path.stat().st_size > 1024
    }
    layers = set(image.layers["linux/amd64"])
    assert layers <= cached, (layers, sorted(cache_volume.rglob("*")))


def test_healthcheck_asks_health(mirror: Mirror) -> None:
    result = mirror.engine.podman("healthcheck", "run", mirror.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fetch(f"{mirror.url}/health").status == 200


def test_arguments_healthcheck_and_sigterm(
    engine: Engine, image: str, upstream: Upstream
) -> None:
    """Arguments after the image name are Docxy's; SIGTERM exits 0."""
    port = free_port()
    name = unique("docxy-image-args")
    engine.start(
        name,
        image,
        args=[
            "--port",
            f"tcp:{port}:interface={LOOPBACK}",
            "--upstream",
            upstream.url,
        ],
    )
    try:
        engine.wait_for_port(name, port)
        # The healthcheck finds the port in PID 1's arguments.
        result = engine.podman("healthcheck", "run", name, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        engine.podman("stop", "--time", "30", name)
        state = engine.state(name)
        assert state["ExitCode"] == 0, (state, engine.logs(name))
        assert "Server Shut Down" in engine.logs(name)
    finally:
        engine.remove(name)


def test_healthcheck_fails_when_docxy_does_not_answer(
    engine: Engine, image: str
) -> None:
    """The check can fail: a container whose Docxy is paused is unhealthy."""
    port = free_port()
    name = unique("docxy-image-paused")
    # One process: SIGSTOP to PID 1 then stops all of Docxy (with workers,
    # PID 1 is their supervisor and the workers would go on answering).
    engine.start(
        name,
        image,
        args=["--port", f"tcp:{port}:interface={LOOPBACK}", "--workers", "1"],
    )
    try:
        engine.wait_for_port(name, port)
        # SIGSTOP: the port stays open, nothing answers.
        engine.podman("kill", "--signal", "STOP", name)
        result = engine.podman("healthcheck", "run", name, check=False)
        assert result.returncode != 0, result.stdout
    finally:
        engine.podman("kill", "--signal", "CONT", name, check=False)
        engine.remove(name)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "bad-variable",
            "DOCXY_IDLE_TIMEOUT: expected a number of seconds, got 'soon'",
        ),
        # A volume or hostPath left owned by root (the DaemonSet's init
        # container hands it to the image's user).
        ("root-owned-cache", "cache-dir: '/var/cache/docxy' is not writable"),
    ],
)
def test_bad_configuration_stops_at_start_with_one_line(
    engine: Engine, image: str, tmp_path: Path, case: str, message: str
) -> None:
    name = unique(f"docxy-image-{case}")
    if case == "bad-variable":
        engine.start(name, image, env={"DOCXY_IDLE_TIMEOUT": "soon"})
    else:
        assert tmp_path.stat().st_uid == 0
        engine.start(name, image, volumes=[f"{tmp_path}:/var/cache/docxy"])
    try:
        assert engine.wait_exit(name) == 2
        lines = [
            line
            for line in engine.logs(name).splitlines()
            if "configuration error" in line
        ]
        assert lines == [f"docxy: configuration error: {message}"]
    finally:
        engine.remove(name)
