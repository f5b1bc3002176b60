"""Session fixtures of the image tests: one private podman, one image build.

Why session scope: building the image takes the better part of a minute;
test_image.py and test_kubernetes.py both run that one build.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.engine import Engine, short_dir

TAG = "localhost/docxy:test"


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """podman with a private store, removed at the end with all it holds."""
    base = short_dir("docxy-engine-")
    podman = Engine(base)
    try:
        yield podman
    finally:
        podman.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    """Docxy's image, built by deploy/image/build.sh into ``engine``."""
    seconds = engine.build(TAG)
    print(f"\nimage {TAG} built in {seconds:.0f}s")
    return TAG
