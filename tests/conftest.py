"""Shared fixtures: real upstream registries and Docxy processes.

Why: integration tests must run Docxy against the real distribution
registry (with a Docker-Hub-like token service), never against mocks. The
upstreams are session-scoped (populated once, a second or so) so the suite
stays fast; so is the plain ``docxy`` (it keeps no state between requests);
every other Docxy is per test (``docxy_factory``) so no state leaks.

Fixture contract (other test modules rely on these names and attributes):

- ``upstream``: token service + registry, populated with
  ``library/alpine:3.20`` (Docker schema2), ``library/multi:1.0`` (OCI
  index, amd64+arm64), ``library/multi:list`` (Docker manifest list),
  ``someuser/tool:latest`` (OCI) and ``private/secret:1`` (alice:secret).
  Attributes: ``url``, ``hostport``, ``token_url``, ``service``,
  ``registry_log``, ``requests()``, ``token_requests()``, ``images``.
- ``cdn_upstream``: same images; blob GET/HEAD answer 307 to a static
  "CDN"; adds ``cdn_requests()``.
- ``tls_upstream``: same images over https; adds ``ca_path``.
- ``mid_upstream``: a registry of its own per module with only ``MID``
  (``library/mid:1``, one 24 MiB layer, ``MID_LAYER`` bytes).
- ``docxy_factory(upstream_url, *extra_args, library_prefix="on")``.
- ``docxy``: one plain Docxy in front of ``upstream``, shared by the session.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.docxy import Docxy, DocxyFactory  # noqa: E402
from tests.support.images import STANDARD_IMAGES, ImageSpec, populate  # noqa: E402
from tests.support.registry import Upstream, start_upstream  # noqa: E402

STANDARD_REPOSITORIES: list[str] = sorted({spec.repo for spec in STANDARD_IMAGES})
# One 24 MiB layer: a fill long enough to hold mid-way (workers, kernel fills).
MID_LAYER = 24 * 1024 * 1024
MID = ImageSpec("library/mid", "1", layer_sizes=(MID_LAYER,), seed="workers")

# Every Docxy the tests start is one process unless the test names
# --workers (docs/scaling.md#workers): logs, pids and signals stay simple.
os.environ.setdefault("DOCXY_WORKERS", "1")

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration (``-m "not integration"``)."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Variant (a): plain token-auth registry, populated once per session."""
    workdir = tmp_path_factory.mktemp("upstream")
    up = start_upstream(workdir, STANDARD_REPOSITORIES)
    try:
        up.images = populate(up, workdir / "images")
        yield up
    finally:
        up.stop()


def upstream_over(
    base: Upstream,
    workdir: Path,
    repositories: Sequence[str] = STANDARD_REPOSITORIES,
    **options: Any,
) -> Iterator[Upstream]:
    """Another registry (and token service) over ``base``'s storage,
    read-only: the same images without pushing them again, in a process a
    test may stop or configure (``options``: cdn, tls, budgets...)."""
    up = start_upstream(
        workdir, repositories, storage=base.registry.storage, readonly=True, **options
    )
    up.images = base.images
    try:
        yield up
    finally:
        up.stop()


def _variant(
    upstream: Upstream,
    factory: pytest.TempPathFactory,
    name: str,
    cdn: bool = False,
    tls: bool = False,
) -> Iterator[Upstream]:
    """Another registry over (a)'s storage, read-only: same images, one push."""
    yield from upstream_over(upstream, factory.mktemp(name), cdn=cdn, tls=tls)


@pytest.fixture(scope="session")
def cdn_upstream(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upstream]:
    """Variant (b): blobs redirect (307) to a static CDN."""
    yield from _variant(upstream, tmp_path_factory, "cdn-upstream", cdn=True)


@pytest.fixture(scope="session")
def tls_upstream(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upstream]:
    """Variant (c): https registry and token service with a test CA."""
    yield from _variant(upstream, tmp_path_factory, "tls-upstream", tls=True)


def upstream_of(
    factory: pytest.TempPathFactory, name: str, specs: Sequence[ImageSpec]
) -> Iterator[Upstream]:
    """A registry (and token service) of its own holding just ``specs``,
    pushed once; the pushed layouts go (the registry has the bytes)."""
    workdir = factory.mktemp(name)
    up = start_upstream(workdir, sorted({spec.repo for spec in specs}))
    try:
        up.images = populate(up, workdir / "images", specs)
        shutil.rmtree(workdir / "images" / "layouts", ignore_errors=True)
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def mid_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A registry of its own holding ``library/mid:1`` (one 24 MiB layer)."""
    yield from upstream_of(tmp_path_factory, "mid-upstream", [MID])


@pytest.fixture
def docxy_factory(tmp_path: Path) -> Iterator[DocxyFactory]:
    """Start Docxy processes; stop them all, and fail if any had died."""
    started: list[Docxy] = []

    class TrackedDocxy(Docxy):
        """Registers itself before waiting, so a hung start is still stopped."""

        def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
            started.append(self)
            super().wait_for_port(port, timeout)

    def factory(
        upstream_url: str, *extra_args: str, library_prefix: str | None = "on"
    ) -> Docxy:
        log = tmp_path / f"docxy-{len(started)}.log"
        return TrackedDocxy(
            upstream_url, log, extra_args, library_prefix=library_prefix
        )

    yield factory
    crashed = [d for d in started if not d.alive() and not d.stopped]
    reports = [
        f"docxy pid {d.pid} exited with {d.popen.returncode}:\n{d.log_text()[-3000:]}"
        for d in crashed
    ]
    for d in started:
        d.stop()
    assert not crashed, "Docxy died during the test:\n" + "\n".join(reports)


@pytest.fixture(scope="session")
def docxy(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Docxy]:
    """One plain Docxy in front of the plain upstream, shared by the session.

    Safe to share: without a cache Docxy keeps nothing a request changes
    (the learnt realm is the same for every test), and tests read its log
    from an offset (``AccessLog``). A test that needs options, a cache or a
    Docxy it may stop uses ``docxy_factory``.
    """
    d = Docxy(upstream.url, tmp_path_factory.mktemp("docxy") / "docxy.log")
    try:
        yield d
        assert d.alive(), f"the shared Docxy died:\n{d.log_text()[-3000:]}"
    finally:
        d.stop()
