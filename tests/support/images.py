"""Build small OCI images without a network and push them with skopeo.

Why: tests need real, digest-checked images in the upstream registry, but
there is no network to pull any. Layers are gzip'd tars of deterministic
pseudo-random bytes (a few hundred KiB: fast, incompressible), each
platform gets a config with ``rootfs.diff_ids`` and a manifest, and a
multi-arch image gets an OCI index. ``skopeo copy`` pushes the layout
(optionally converted to Docker schema2 / manifest list), and the pushed
digests are read back from the registry, since conversion changes them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digests import sha256_digest
from .skopeo import run_skopeo

if TYPE_CHECKING:
    from .registry import Upstream

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})


@dataclass(frozen=True)
class ImageSpec:
    """What to build and where to push it."""

    repo: str
    tag: str
    platforms: tuple[str, ...] = ("linux/amd64",)
    layer_sizes: tuple[int, ...] = (160 * 1024,)
    format: str = "oci"  # "oci" or "v2s2" (Docker schema2 / manifest list)
    seed: str = ""

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"

    @property
    def multi(self) -> bool:
        return len(self.platforms) > 1


@dataclass
class ImageInfo:
    """An image as the upstream registry serves it (digests read back)."""

    repo: str
    tag: str
    digest: str  # top-level manifest or index digest
    media_type: str
    platform_digests: dict[str, str]  # "linux/amd64" -> manifest digest
    blobs: list[str]  # config and layer digests of every platform
    manifests: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes
    layers: dict[str, list[str]] = field(default_factory=dict)  # platform -> layers
    configs: dict[str, str] = field(default_factory=dict)  # platform -> config

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"


# The images the shared ``upstream`` fixture holds (names are the contract).
STANDARD_IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec(
        "library/alpine", "3.20", layer_sizes=(300 * 1024, 120 * 1024), format="v2s2"
    ),
    ImageSpec(
        "library/multi",
        "1.0",
        platforms=("linux/amd64", "linux/arm64"),
        layer_sizes=(200 * 1024,),
        format="oci",
        seed="multi",
    ),
    ImageSpec(
        "library/multi",
        "list",
        platforms=("linux/amd64", "linux/arm64"),
        layer_sizes=(200 * 1024,),
        format="v2s2",
        seed="multi",
    ),
    ImageSpec("someuser/tool", "latest", layer_sizes=(180 * 1024,)),
    ImageSpec("private/secret", "1", layer_sizes=(100 * 1024,)),
)


# --------------------------------------------------------------------------
# OCI layout
# --------------------------------------------------------------------------


def make_layer(seed: str, size: int) -> tuple[bytes, str]:
    """A deterministic gzip'd tar layer; returns (blob, diff_id)."""
    payload = random.Random(seed).randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(
            f"data/{hashlib.sha256(seed.encode()).hexdigest()[:12]}.bin"
        )
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0) as f:
        f.write(tar_bytes)
    return gz.getvalue(), sha256_digest(tar_bytes)


class OCILayout:
    """Writes blobs and an index.json into an OCI image layout directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.refs: list[dict[str, Any]] = []

    def add_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def add_json(self, doc: Mapping[str, Any], media_type: str) -> dict[str, Any]:
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return {
            "mediaType": media_type,
            "digest": self.add_blob(data),
            "size": len(data),
        }

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        self.refs.append(
            {**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}}
        )
        index = {"schemaVersion": 2, "manifests": self.refs}
        (self.path / "index.json").write_text(json.dumps(index))


def build_layout(spec: ImageSpec, directory: Path) -> Path:
    """Write ``spec`` as an OCI layout tagged ``spec.tag`` in ``directory``."""
    layout = OCILayout(directory)
    platform_descs = []
    for platform in spec.platforms:
        os_name, arch = platform.split("/")[:2]
        layers = []
        diff_ids = []
        for i, size in enumerate(spec.layer_sizes):
            blob, diff_id = make_layer(f"{spec.seed or spec.repo}/{platform}/{i}", size)
            layers.append(
                {
                    "mediaType": OCI_LAYER_GZIP,
                    "digest": layout.add_blob(blob),
                    "size": len(blob),
                }
            )
            diff_ids.append(diff_id)
        config = {
            "architecture": arch,
            "os": os_name,
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Cmd": ["/bin/true"],
                "Env": [f"IMAGE={spec.seed or spec.repo}"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": "docxy tests"}
                for _ in layers
            ],
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": layout.add_json(config, OCI_CONFIG),
            "layers": layers,
        }
        desc = layout.add_json(manifest, OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": os_name}
        platform_descs.append(desc)
    if spec.multi:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": platform_descs,
        }
        layout.tag(layout.add_json(index, OCI_INDEX), spec.tag)
    else:
        desc = dict(platform_descs[0])
        desc.pop("platform")
        layout.tag(desc, spec.tag)
    return directory


def push(spec: ImageSpec, layout: Path, upstream: Upstream, workdir: Path) -> None:
    """``skopeo copy`` the layout into the upstream as pusher."""
    args = [
        "copy",
        "--quiet",
        "--dest-creds",
        "pusher:pushpass",
        "--dest-tls-verify=false",
    ]
    if spec.multi:
        args.append("--all")
    if spec.format == "v2s2":
        args += ["--format", "v2s2"]
    args += [f"oci:{layout}:{spec.tag}", f"docker://{upstream.hostport}/{spec.ref}"]
    run_skopeo(args, workdir)


def read_back(spec: ImageSpec, upstream: Upstream) -> ImageInfo:
    """Digests as the registry serves them (the ground truth for tests)."""
    top = upstream.manifest(spec.repo, spec.tag)
    digest = sha256_digest(top.body)
    assert top.header("Docker-Content-Digest") == digest, spec.ref
    media_type = top.header("Content-Type") or ""
    info = ImageInfo(
        spec.repo, spec.tag, digest, media_type, {}, [], manifests={digest: top.body}
    )
    children: list[tuple[str, str]] = []
    if media_type in INDEX_TYPES:
        for desc in top.json()["manifests"]:
            p = desc["platform"]
            children.append((f"{p['os']}/{p['architecture']}", desc["digest"]))
    else:
        children.append((spec.platforms[0], digest))
    for platform, child_digest in children:
        info.platform_digests[platform] = child_digest
        body = info.manifests.get(child_digest)
        if body is None:
            body = upstream.manifest(spec.repo, child_digest).body
            assert sha256_digest(body) == child_digest
            info.manifests[child_digest] = body
        doc = json.loads(body)
        info.configs[platform] = doc["config"]["digest"]
        info.layers[platform] = [layer["digest"] for layer in doc["layers"]]
        for blob in [doc["config"]["digest"], *info.layers[platform]]:
            if blob not in info.blobs:
                info.blobs.append(blob)
    return info


def populate(
    upstream: Upstream, workdir: Path, specs: Sequence[ImageSpec] = STANDARD_IMAGES
) -> dict[str, ImageInfo]:
    """Build, push and read back ``specs``; returns ``{"repo:tag": ImageInfo}``."""
    images: dict[str, ImageInfo] = {}
    for n, spec in enumerate(specs):
        layout = build_layout(
            spec, workdir / "layouts" / f"{n}-{spec.repo.replace('/', '_')}"
        )
        push(spec, layout, upstream, workdir)
        images[spec.ref] = read_back(spec, upstream)
    return images
