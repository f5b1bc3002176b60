"""Docxy's Prometheus series as the tests read them.

A scrape is parsed by prometheus_client's own parser (not by regex), so a
test reads exactly what Prometheus would: ``(name, sorted labels) -> value``.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .processes import LOOPBACK
from .registry import fetch

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    """Every sample of a text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> Samples:
    """GET /metrics on a ``--metrics-port``: 200, Prometheus' text format."""
    answer = fetch(f"http://{LOOPBACK}:{port}/metrics")
    assert answer.status == 200, answer.body
    assert (answer.header("Content-Type") or "").startswith("text/plain; version=0.0.4")
    return samples_of(answer.body.decode())


def one(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 if there is none yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    """A series summed over all its labels."""
    return sum(v for (n, _), v in samples.items() if n == name)
