"""Packaging for Docxy: the project's metadata is in pyproject.toml.

Here: the packages (the twistd plugin lives in twisted/plugins/, which has no
__init__.py and so is named explicitly), dependencies and console scripts.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(exclude=["twisted", "tests", "tests.*", "benchmarks"]),
        "twisted.plugins",
    ],
    package_data={"docxy": ["py.typed"]},
    entry_points={
        "console_scripts": [
            "docxy-prefetch = docxy.prefetch:main",
            "docxy-cache = docxy.cache.cli:run",
        ]
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "treq>=24.9",
        "pyopenssl>=24.3",
        "service-identity>=24.1",
        "josepy>=1.14",
        "cryptography>=42",
        "prometheus-client>=0.20",
        "bcrypt>=4.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "cryptography>=42",
            "pyyaml>=6",
            "kubernetes-validate>=1.28",
        ],
        "dev": [
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
            "types-PyYAML",
        ],
    },
    zip_safe=False,
)
