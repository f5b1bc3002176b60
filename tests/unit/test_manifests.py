"""deploy/kubernetes and deploy/image: schemas, and agreement with Docxy.

Why: a manifest that the API server rejects, a hosts.toml for a registry
Docxy does not mirror, a probe on a port Docxy does not listen on, or a
configuration Docxy refuses, all fail only on a real cluster, long after
the change. These checks run the Kubernetes OpenAPI schemas
(``kubernetes-validate``, offline, strict: unknown fields fail) and Docxy's
own configuration loader over every file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from docxy.config import build_config, load_file
from docxy.environment import settings_from_env
from docxy.upstream_set import PRESETS

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes still in wide use, and the newest the package knows.
VERSIONS = ["1.28", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


MANIFESTS = sorted(
    p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml"
)
KUSTOMIZATIONS = sorted(KUBERNETES.rglob("kustomization.yaml"))


def one(path: str) -> dict[str, Any]:
    (doc,) = documents(KUBERNETES / path)
    return doc


def pod_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
                specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


def docxy_toml(configmap: str) -> dict[str, Any]:
    return tomllib.loads(one(configmap)["data"]["docxy.toml"])


def test_there_are_manifests_and_kustomizations() -> None:
    kinds = {d["kind"] for p in MANIFESTS for d in documents(p)}
    assert {
        "Namespace",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "StatefulSet",
        "Ingress",
    } <= kinds
    assert len(KUSTOMIZATIONS) == 5


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_passes_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail() -> None:
    deployment = one("cluster/deployment.yaml")
    deployment["spec"]["template"]["spec"]["containres"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO))
)
def test_kustomization_resources_exist(kustomization: Path) -> None:
    doc = one(str(kustomization.relative_to(KUBERNETES)))
    assert doc["kind"] == "Kustomization"
    for resource in doc["resources"]:
        target = (kustomization.parent / resource).resolve()
        assert target.exists(), resource
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), resource
        else:  # kustomize loads files only at or below its own directory
            assert kustomization.parent in target.parents, resource


def test_top_kustomization_holds_every_manifest() -> None:
    doc = one("kustomization.yaml")
    assert sorted(KUBERNETES / r for r in doc["resources"]) == MANIFESTS


def test_every_pod_is_non_root_without_service_links() -> None:
    specs = pod_specs()
    assert set(specs) == {"docxy", "docxy-node", "docxy-replica"}
    for name, spec in specs.items():
        # A Service "docxy" would define DOCXY_PORT=tcp://... (see
        # docxy/environment.py): Docxy would refuse to start.
        assert spec["enableServiceLinks"] is False, name
        (container,) = spec["containers"]
        context = {**spec.get("securityContext", {}), **container["securityContext"]}
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == 10001, name
        assert container["resources"]["requests"], name
        assert container["resources"]["limits"], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name


@pytest.mark.parametrize(
    ("workload", "configmap"),
    [
        ("docxy", "cluster/configmap.yaml"),
        ("docxy-node", "node-local/configmap.yaml"),
        ("docxy-replica", "replicas/configmap.yaml"),
    ],
)
def test_the_pod_waits_longer_than_docxys_shutdown(
    workload: str, configmap: str
) -> None:
    settings = docxy_toml(configmap)
    grace = pod_specs()[workload]["terminationGracePeriodSeconds"]
    assert grace > settings["shutdown-timeout"] > 0


def test_shipped_configurations_load(tmp_path: Path) -> None:
    """The image's file and both ConfigMaps, through Docxy's own loader."""
    texts = {
        "image": (REPO / "deploy" / "image" / "docxy.toml").read_text(),
        "cluster": one("cluster/configmap.yaml")["data"]["docxy.toml"],
        "node-local": one("node-local/configmap.yaml")["data"]["docxy.toml"],
        "replicas": one("replicas/configmap.yaml")["data"]["docxy.toml"],
    }
    for name, text in texts.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text.replace("/var/cache/docxy", str(tmp_path / name)))
        config = build_config({}, load_file(str(path)))
        assert config.cache_dir == tmp_path / name, name


def test_metrics_only_on_the_metrics_port() -> None:
    """Prometheus finds /metrics where Docxy serves it; clients never see it."""
    cluster = docxy_toml("cluster/configmap.yaml")
    (container,) = pod_specs()["docxy"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert cluster["metrics-port"] == f"tcp:{ports['metrics']}"
    service = one("cluster/service.yaml")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    deployment = one("cluster/deployment.yaml")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])

    (node,) = pod_specs()["docxy-node"]["containers"]
    env = {e["name"]: e for e in node["env"]}
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    value = env["DOCXY_METRICS_PORT"]["value"]
    node_ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert value == f"tcp:{node_ports['metrics']}:interface=$(HOST_IP)"
    # As the kubelet expands it, it is a setting Docxy takes.
    expanded = {"DOCXY_METRICS_PORT": value.replace("$(HOST_IP)", "10.1.2.3")}
    assert settings_from_env(expanded) == {
        "metrics-port": f"tcp:{node_ports['metrics']}:interface=10.1.2.3"
    }


def test_cluster_public_url_is_the_service_name() -> None:
    service = one("cluster/service.yaml")
    settings = docxy_toml("cluster/configmap.yaml")
    meta = service["metadata"]
    (port,) = service["spec"]["ports"]
    expected = f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local"
    assert settings["public-url"] == f"{expected}:{port['port']}"
    assert settings["port"] == [f"tcp:{port['port']}"]
    deployment = one("cluster/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["name"] == port["targetPort"] == "http"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one cache owner
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_node_local_hosts_toml_for_every_preset() -> None:
    """Every registry Docxy mirrors, pointed at the node's Docxy."""
    settings = docxy_toml("node-local/configmap.yaml")
    assert settings["port"] == ["tcp:5000:interface=127.0.0.1"]
    mirror = settings["public-url"]
    assert set(settings["preset"]) == set(PRESETS)
    hosts = one("node-local/hosts-configmap.yaml")["data"]
    wanted = {
        namespace
        for preset in PRESETS.values()
        for namespace in preset.namespaces
        if namespace not in ("registry-1.docker.io", "index.docker.io")
    }
    assert set(hosts) == wanted
    for registry, text in hosts.items():
        doc = tomllib.loads(text)
        preset = PRESETS.get(registry)
        server = preset.url if preset else f"https://{registry}"
        assert doc["server"] == server, registry
        assert doc["host"] == {mirror: {"capabilities": ["pull", "resolve"]}}

    spec = pod_specs()["docxy-node"]
    assert spec["hostNetwork"] is True
    (container,) = spec["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert f"http://{get['host']}:{get['port']}" == mirror
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["containerd-certs"]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert volumes["cache"]["hostPath"]["path"] == "/var/cache/docxy"
    (init,) = spec["initContainers"]
    assert "hosts.toml" in init["command"][-1]


def test_replicas_share_the_ingress_url_and_each_has_its_own_volume() -> None:
    """Digest-affine replicas: one public-url (the Ingress's host, so a token
    from any replica's realm is good everywhere), a hash over the path
    without the query string, and a cache volume per replica."""
    settings = docxy_toml("replicas/configmap.yaml")
    ingress = one("replicas/ingress.yaml")
    (rule,) = ingress["spec"]["rules"]
    assert settings["public-url"] == f"http://{rule['host']}"
    annotations = ingress["metadata"]["annotations"]
    key = annotations["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert key == "$uri"  # not $request_uri: ?ns= must not scatter a blob
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    (path,) = rule["http"]["paths"]
    service = one("replicas/service.yaml")
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert path["backend"]["service"]["port"]["name"] == "http"

    statefulset = one("replicas/statefulset.yaml")
    spec = statefulset["spec"]
    assert spec["replicas"] >= 2
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings["cache-dir"]
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert claim["metadata"]["name"] not in volumes  # one claim per replica
    assert settings["port"] == [f"tcp:{container['ports'][0]['containerPort']}"]


def test_balancer_examples_name_the_statefulsets_pods() -> None:
    """deploy/balancer's servers are the replicas layout's pod names.

    A StatefulSet's pod is reachable as <name>-<N>.<serviceName>; a name
    that is not one of them resolves nowhere in the cluster.
    """
    statefulset = one("replicas/statefulset.yaml")
    service = one("replicas/service.yaml")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    prefix = f"{statefulset['metadata']['name']}-"
    suffix = f".{service['metadata']['name']}:5000"
    balancer = KUBERNETES.parent / "balancer"
    nginx = re.findall(
        r"^\s*server (\S+:\d+)", (balancer / "nginx.conf").read_text(), re.M
    )
    haproxy = re.findall(
        r"^\s*server (\S+) (\S+)", (balancer / "haproxy.cfg").read_text(), re.M
    )
    assert nginx and haproxy
    addresses = nginx + [address for _, address in haproxy]
    for address in addresses:
        assert address.startswith(prefix) and address.endswith(suffix), address
        assert address[len(prefix) : -len(suffix)].isdigit(), address
    for name, address in haproxy:
        assert address.startswith(f"{name}."), (name, address)
