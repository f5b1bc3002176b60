"""deploy/kubernetes run by ``podman kube play``, with real clients pulling.

Why: schema validation (tests/unit/test_manifests.py) says the API server
accepts the manifests, not that they work. Here the same files run: the
cluster Deployment with its ConfigMap and claim serves a skopeo pull, and
the node-local DaemonSet's init container installs the hosts.toml files
that a real containerd then uses to find the node's Docxy, for docker.io
and another registry.

What differs from a cluster, as little as podman needs: every pod uses the
host network on free 127.0.0.1 ports (the mirror's and /metrics'), the
node's IP is loopback, the upstreams are the test registry, the image is
this session's build, the node's directories are test directories. podman
refuses containerPorts with the host network (probes name the port number
instead), runs a DaemonSet's pod template only as a Pod, and restarts a
finished init container under ``restartPolicy: Always`` (podman 4.3), so
that Pod has ``OnFailure``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clients import CONTAINERD, CTR, Containerd
from tests.support.daemons import running
from tests.support.digests import file_digest
from tests.support.engine import (
    DOCXY_UID,
    KUBERNETES,
    NEEDS_ENGINE,
    Engine,
)
from tests.support.processes import LOOPBACK, free_port
from tests.support.registry import Upstream, fetch
from tests.support.skopeo import skopeo_pull

pytestmark = NEEDS_ENGINE

MANIFEST_PORT = "127.0.0.1:5000"


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load(path.read_text()))
    return doc


class Ports:
    """The test's free ports: the mirror's and the metrics listener's."""

    def __init__(self) -> None:
        self.mirror, self.metrics = free_port(), free_port()
        self.hostport = f"{LOOPBACK}:{self.mirror}"


def on_host_network(pod: dict[str, Any], image: str, ports: Ports) -> None:
    """The pod spec changes podman needs (see the module docstring)."""
    pod["hostNetwork"] = True
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        container["image"] = image
        container.pop("ports", None)
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in container:
                container[probe]["httpGet"]["port"] = ports.mirror
        # The node's IP (a fieldRef podman lacks) becomes loopback.
        env = [e for e in container.get("env", []) if e["name"] != "HOST_IP"]
        for var in env:
            if var["name"] == "DOCXY_METRICS_PORT":
                var["value"] = f"tcp:{ports.metrics}:interface={LOOPBACK}"
        if env:
            container["env"] = env


def configmap_on(path: Path, ports: Ports, extra: list[str]) -> dict[str, Any]:
    """A ConfigMap whose docxy.toml listens on ``ports``, plus settings."""
    configmap = load(path)
    toml: str = configmap["data"]["docxy.toml"]
    lines = [
        line
        for line in toml.replace(MANIFEST_PORT, ports.hostport).splitlines()
        if not line.startswith(("port", "public-url", "metrics-port"))
    ]
    lines = [
        f'port = ["tcp:{ports.mirror}:interface={LOOPBACK}"]',
        f'public-url = "http://{ports.hostport}"',
        *(
            [f'metrics-port = "tcp:{ports.metrics}:interface={LOOPBACK}"']
            if "metrics-port" in toml
            else []
        ),
        *lines,
        *extra,  # last: they may be tables
    ]
    configmap["data"]["docxy.toml"] = "\n".join(lines) + "\n"
    return configmap


def assert_ready_and_counted(ports: Ports, route: str) -> None:
    """/ready answers on the mirror's port, /metrics counted ``route`` there."""
    ready = fetch(f"http://{ports.hostport}/ready")
    assert ready.status == 200, ready.body
    text = fetch(f"http://{LOOPBACK}:{ports.metrics}/metrics").body.decode()
    counted = [
        float(m[2])
        for m in re.finditer(r"^docxy_requests_total\{([^}]*)\} (\S+)$", text, re.M)
        if f'route="{route}"' in m[1] and 'status="200"' in m[1]
    ]
    assert sum(counted) >= 1, text[-3000:]


def test_cluster_deployment_serves_a_pull(
    engine: Engine, image: str, upstream: Upstream, tmp_path: Path
) -> None:
    ports = Ports()
    cluster = KUBERNETES / "cluster"
    configmap = configmap_on(
        cluster / "configmap.yaml", ports, [f'upstream = "{upstream.url}"']
    )
    deployment = load(cluster / "deployment.yaml")
    on_host_network(deployment["spec"]["template"]["spec"], image, ports)
    manifest = tmp_path / "docxy-cluster.yaml"
    manifest.write_text(
        yaml.safe_dump_all([configmap, load(cluster / "pvc.yaml"), deployment])
    )
    # podman names a Deployment's pods <deployment>-pod-<n>, their
    # containers <pod>-<container>.
    name = "docxy-pod-0-docxy"
    engine.kube_play(manifest)
    try:
        engine.wait_for_port(name, ports.mirror)
        image_info = upstream.images["library/alpine:3.20"]
        out = tmp_path / "alpine"
        skopeo_pull(ports.hostport, "library/alpine:3.20", out)
        assert file_digest(out / "manifest.json") == image_info.digest
        # The mounted ConfigMap is what configured it.
        assert f"token realm http://{ports.hostport}/auth/token" in engine.logs(name)
        assert_ready_and_counted(ports, "manifests")
    finally:
        engine.kube_down(manifest)
    left = engine.podman("ps", "--all", "--quiet", "--filter", f"name={name}")
    assert left.stdout == ""


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    yield from running(tmp_path_factory, "containerd", [CONTAINERD, CTR], Containerd)


def test_node_local_daemonset_points_containerd_at_the_nodes_docxy(
    engine: Engine,
    image: str,
    upstream: Upstream,
    containerd: Containerd,
    tmp_path: Path,
) -> None:
    """The init container's hosts.toml files are how containerd finds Docxy."""
    ports = Ports()
    node = KUBERNETES / "node-local"
    configmap = configmap_on(
        node / "configmap.yaml",
        ports,
        # The presets' URLs are the real registries: the test one stands in.
        [
            f'upstream = "{upstream.url}"',
            '[upstreams."ghcr.io"]',
            f'url = "{upstream.url}"',
        ],
    )
    hosts = load(node / "hosts-configmap.yaml")
    for registry, text in hosts["data"].items():
        hosts["data"][registry] = text.replace(MANIFEST_PORT, ports.hostport)
    daemonset = load(node / "daemonset.yaml")
    pod = daemonset["spec"]["template"]["spec"]
    on_host_network(pod, image, ports)
    pod["restartPolicy"] = "OnFailure"
    certs, cache = tmp_path / "certs.d", tmp_path / "cache"
    paths = {"containerd-certs": certs, "cache": cache}
    for volume in pod["volumes"]:
        if volume["name"] in paths:
            volume["hostPath"]["path"] = str(paths[volume["name"]])
    as_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": daemonset["metadata"]["name"],
            "labels": daemonset["spec"]["template"]["metadata"]["labels"],
        },
        "spec": pod,
    }
    manifest = tmp_path / "docxy-node.yaml"
    manifest.write_text(yaml.safe_dump_all([configmap, hosts, as_pod]))
    name = "docxy-node-docxy"
    engine.kube_play(manifest)
    try:
        engine.wait_for_port(name, ports.mirror)
        assert sorted(p.name for p in certs.iterdir()) == sorted(hosts["data"])
        assert (cache.stat().st_uid, cache.stat().st_gid) == (DOCXY_UID, DOCXY_UID)
        for ref, namespace_ref in (
            ("library/alpine:3.20", "docker.io/library/alpine:3.20"),
            ("someuser/tool:latest", "ghcr.io/someuser/tool:latest"),
        ):
            containerd.pull("k8s.io", namespace_ref, hosts_dir=certs)
            digest = containerd.image_digest("k8s.io", namespace_ref)
            assert digest == upstream.images[ref].digest, namespace_ref
        assert_ready_and_counted(ports, "blobs")
        logs = engine.logs(name)
        for registry in ("docker.io", "ghcr.io"):  # routed by containerd's ?ns=
            assert f'ns="{registry}"' in logs, logs[-3000:]
            assert f"upstream={registry}" in logs, logs[-3000:]
        assert any(cache.rglob("*")), "nothing cached in the node's cache"
    finally:
        engine.kube_down(manifest)
