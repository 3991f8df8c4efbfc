"""A node's own counters over a benchmark window, from its ``--metrics-port``.

Why: CPU and bytes sent say what the primary paid; its counters say what for. Requests from
followers (heartbeats, acks, WalSync) grow with its direct followers whatever the tree
below them, and entries per group commit show how a loaded machine changes the primary's
cost per write (bigger groups on a starved machine are fewer fdatasyncs and records).
"""

from __future__ import annotations

import re
import urllib.request

__all__ = ["FOLLOWER_KINDS", "delta", "scrape", "window_figures"]

FOLLOWER_KINDS = ("register", "heartbeat", "ack", "wal_sync", "bootstrap", "rewind")
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(host: str, port: int, timeout: float = 5.0) -> dict[str, float]:
    """``name{labels}`` -> value of every sample the node serves."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is not None and not line.startswith("#"):
            out[m[1] + (m[2] or "")] = float(m[3])
    return out


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def window_figures(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """The primary's follower requests/s, bytes published/s and entries per group commit."""
    kinds = {k: delta(before, after, f'kevo_requests_total{{kind="{k}"}}') for k in FOLLOWER_KINDS}
    groups = delta(before, after, "kevo_commit_group_entries_count")
    entries = delta(before, after, "kevo_commit_group_entries_sum")
    return {
        "primary_follower_requests_per_s": round(sum(kinds.values()) / seconds, 1),
        "primary_acks_per_s": round(kinds["ack"] / seconds, 1),
        "primary_published_kb_per_s": round(
            delta(before, after, "kevo_bytes_published_total") / seconds / 1e3, 2
        ),
        "primary_group_entries_mean": round(entries / groups, 2) if groups else 0.0,
    }
