"""Integration tests: real processes (a package, so basenames may repeat tests/unit)."""
