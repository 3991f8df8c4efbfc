"""Scraping a real node's ``--metrics-port``: raw text, samples, and the series names it serves.

Shared by the metrics tests and the dashboard test, so both read the same endpoint the same way.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from kevo_repl.testing.ports import free_port
from tests.nodes import Cluster, Node

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The series a family of each type serves in the text format (a counter's TYPE line already
# names it with _total).
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text: str = resp.read().decode()
    return text


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> Samples:
    return parse(scrape_text(port))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def family_types(text: str) -> dict[str, str]:
    """``{name: type}`` from the ``# TYPE`` lines: families with no samples yet too."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def series_names(text: str) -> set[str]:
    """Every name a query may use against this endpoint (``x_bucket`` for a histogram)."""
    names: set[str] = set()
    for name, kind in family_types(text).items():
        names |= {name + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    return names


def started_pair(cluster: Cluster) -> tuple[Node, int, Node, int]:
    """A primary and a replica of it, each serving metrics: (primary, its metrics port,
    replica, its metrics port). Both answer requests; the replica may still be joining."""
    pm, rm = free_port(), free_port()
    primary = cluster.primary("primary", "--metrics-port", str(pm))
    replica = cluster.replica("r1", primary, "--metrics-port", str(rm))
    return primary, pm, replica, rm
