"""docxy-prefetch: image references, platforms, index selection, the command line."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from docxy.prefetch import (
    Platform,
    PrefetchError,
    Reference,
    main,
    parse_platform,
    parse_reference,
    select_manifests,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected", "repository", "reference"),
    [
        ("alpine", Reference(None, "alpine", "latest"), "alpine", "latest"),
        ("alpine:3.20", Reference(None, "alpine", "3.20"), "alpine", "3.20"),
        (
            f"library/alpine@{DIGEST}",
            Reference(None, "library/alpine", None, DIGEST),
            "library/alpine",
            DIGEST,
        ),
        (  # a digest wins over the tag, as in docker pull
            f"alpine:3.20@{DIGEST}",
            Reference(None, "alpine", "3.20", DIGEST),
            "alpine",
            DIGEST,
        ),
        (
            "ghcr.io/owner/img:1",
            Reference("ghcr.io", "owner/img", "1"),
            "ghcr.io/owner/img",
            "1",
        ),
        (
            "registry.k8s.io/pause:3.9",
            Reference("registry.k8s.io", "pause", "3.9"),
            "registry.k8s.io/pause",
            "3.9",
        ),
        (  # Docker Hub's other host names are its docker.io alias
            "index.docker.io/library/alpine",
            Reference("docker.io", "library/alpine", "latest"),
            "docker.io/library/alpine",
            "latest",
        ),
        (
            "registry-1.docker.io/x/y:2",
            Reference("docker.io", "x/y", "2"),
            "docker.io/x/y",
            "2",
        ),
        (
            "localhost/img",
            Reference("localhost", "img", "latest"),
            "localhost/img",
            "latest",
        ),
        (  # no dot in the first component: a name, left to Docxy's routing
            "team/internal/img:v1",
            Reference(None, "team/internal/img", "v1"),
            "team/internal/img",
            "v1",
        ),
        (
            "GHCR.IO/owner/img",
            Reference("ghcr.io", "owner/img", "latest"),
            "ghcr.io/owner/img",
            "latest",
        ),
        ("  alpine:3  ", Reference(None, "alpine", "3"), "alpine", "3"),
    ],
)
def test_parse_reference(
    text: str, expected: Reference, repository: str, reference: str
) -> None:
    parsed = parse_reference(text)
    assert parsed == expected
    assert (parsed.repository, parsed.reference) == (repository, reference)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Alpine", "invalid repository name"),
        ("alpine:", "invalid tag"),
        ("alpine:-x", "invalid tag"),
        ("alpine@sha256:abc", "invalid digest"),
        ("alpine@md5:" + "ab" * 16, "invalid digest"),
        ("a//b", "invalid repository name"),
        ("ghcr.io/Owner/img", "invalid repository name"),
        ("ghcr.io/", "invalid repository name"),
        ("localhost:5000/img", "port"),
        ("127.0.0.1:5000/img:1", "port"),
    ],
)
def test_parse_reference_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_reference(text)


def test_parse_platform() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert str(parse_platform("linux/arm/v7")) == "linux/arm/v7"
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d", ""):
        with pytest.raises(ValueError):
            parse_platform(bad)


INDEX: dict[str, object] = {
    "manifests": [
        {"digest": "d-amd64", "platform": {"os": "linux", "architecture": "amd64"}},
        {
            "digest": "d-arm64",
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        },
        {
            "digest": "d-armv7",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        },
        {"digest": "d-att", "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
}


def digests(entries: list[dict[str, object]]) -> list[object]:
    return [e["digest"] for e in entries]


def test_select_manifests() -> None:
    assert digests(select_manifests(INDEX, None)) == [
        "d-amd64",
        "d-arm64",
        "d-armv7",
        "d-att",
    ]
    amd64 = parse_platform("linux/amd64")
    arm64 = parse_platform("linux/arm64")  # no variant: any variant
    assert digests(select_manifests(INDEX, [amd64])) == ["d-amd64"]
    assert digests(select_manifests(INDEX, [arm64, amd64])) == ["d-amd64", "d-arm64"]
    assert digests(select_manifests(INDEX, [parse_platform("linux/arm/v7")])) == [
        "d-armv7"
    ]


def test_select_manifests_names_what_the_index_has() -> None:
    with pytest.raises(PrefetchError) as caught:
        select_manifests(INDEX, [parse_platform("linux/arm/v6")])
    message = str(caught.value)
    assert "linux/arm/v6" in message
    assert "linux/amd64, linux/arm/v7, linux/arm64/v8, unknown/unknown" in message


def test_command_line_errors_are_one_line_per_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 9 on loopback: nothing listens, so the mirror is unreachable.
    status = main(["--mirror", "http://127.0.0.1:9", "Bad:ref", "alpine"])
    assert status == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "docxy-prefetch: Bad:ref: invalid repository name 'Bad'",
        err.splitlines()[1],
    ]
    assert err.splitlines()[1].startswith(
        "docxy-prefetch: alpine: mirror http://127.0.0.1:9 unreachable: "
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--mirror", "ftp://x", "alpine"],
        ["--mirror", "http://127.0.0.1:9", "--platform", "linux", "alpine"],
        ["--mirror", "http://127.0.0.1:9", "--user", "nopassword", "alpine"],
        ["--mirror", "http://127.0.0.1:9", "--concurrency", "0", "alpine"],
        [
            "--mirror",
            "http://127.0.0.1:9",
            "--all-platforms",
            "--platform",
            "linux/amd64",
            "alpine",
        ],
        ["--mirror", "http://127.0.0.1:9"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


# --- against a scripted mirror: what a client must never accept ---------------


class FakeMirror:
    """A loopback HTTP server with one single-platform image; blobs scripted."""

    def __init__(self, layer_body: bytes, layer_length: int | None = None) -> None:
        config = b'{"architecture":"amd64","os":"linux"}'
        layer = b"the real layer bytes" * 100
        self.blobs = {sha256(config): config, sha256(layer): layer_body}
        self.layer = sha256(layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": sha256(config), "size": len(config)},
                "layers": [{"digest": self.layer, "size": len(layer)}],
            }
        ).encode()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self._send(200, b"{}")
                elif self.path == "/v2/img/manifests/1":
                    self._send(200, manifest, OCI_MANIFEST)
                elif self.path.startswith("/v2/img/blobs/"):
                    digest = self.path.rsplit("/", 1)[1]
                    body = mirror.blobs[digest]
                    length = len(body)
                    if digest == mirror.layer and layer_length is not None:
                        length = layer_length
                    self._send(200, body, length=length)
                    self.close_connection = True
                else:
                    self._send(404, b"{}")

            def _send(
                self,
                code: int,
                body: bytes,
                kind: str = "application/json",
                length: int | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(length or len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("layer_body", "layer_length", "why"),
    [
        (b"X" * 2000, None, "the bytes do not match the digest"),  # whole, wrong
        (b"the real layer bytes" * 50, 2000, "short read, 1000 of 2000 bytes"),
    ],
)
def test_a_blob_that_is_not_its_digest_fails_the_image(
    capsys: pytest.CaptureFixture[str],
    layer_body: bytes,
    layer_length: int | None,
    why: str,
) -> None:
    mirror = FakeMirror(layer_body, layer_length)
    try:
        status = main(["--mirror", mirror.url, "img:1"])
    finally:
        mirror.close()
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err == f"docxy-prefetch: img:1: blob {mirror.layer}: {why}\n"


def test_a_good_image_from_the_scripted_mirror(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = FakeMirror(b"the real layer bytes" * 100)
    try:
        status = main(["--mirror", mirror.url, "img:1"])
    finally:
        mirror.close()
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert " single-platform manifests=1 blobs=2 bytes=2037 " in out, out
