"""docxy-prefetch: image references, platforms, index selection, the command line.

What a scripted mirror does to it (bad bytes, short reads, silence, many
blobs) is in test_prefetch_mirror.py, in memory on a fake clock.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from docxy.prefetch import main
from docxy.prefetch.cli import parse_options, run
from docxy.prefetch.references import (
    Platform,
    PrefetchError,
    Reference,
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


@pytest_twisted.ensureDeferred
async def test_command_line_errors_are_one_line_per_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 9 on loopback: nothing listens, so the mirror is unreachable.
    options = parse_options(["--mirror", "http://127.0.0.1:9", "Bad:ref", "alpine"])
    status = await run(reactor, options)
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
        ["--mirror", "http://127.0.0.1:9", "--timeout", "0", "alpine"],
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
