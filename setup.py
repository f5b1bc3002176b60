"""Packaging for Docxy; the twistd plugin lives in twisted/plugins/."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(
    r'^__version__ = "([^"]+)"',
    Path(__file__).parent.joinpath("docxy", "__init__.py").read_text(),
    re.M,
)
assert version is not None

setup(
    name="docxy",
    version=version.group(1),
    description="A pull-through mirror for Docker / OCI registries, on Twisted",
    long_description=Path(__file__).parent.joinpath("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=[
        *find_packages(exclude=["twisted", "tests", "tests.*", "benchmarks"]),
        "twisted.plugins",
    ],
    package_data={"docxy": ["py.typed"]},
    entry_points={"console_scripts": ["docxy-prefetch = docxy.prefetch:main"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "treq>=24.9",
        "pyopenssl>=24.3",
        "service-identity>=24.1",
        "josepy>=1.14",
        "cryptography>=42",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "cryptography>=42",
        ],
        "dev": [
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
        ],
    },
    zip_safe=False,
)
