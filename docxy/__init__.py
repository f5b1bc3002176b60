"""Docxy: a pull-through mirror for Docker / OCI registries."""

__version__ = "0.1.0"
