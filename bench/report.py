"""Percentiles, lag summaries, kevo/Redis ratios and readable tables for the commands."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["add_ratios", "cdf_points", "lag_summary", "percentile", "ratio", "render"]

# Quantiles kept in JSON for the CDF plot: dense in the tail, where lag matters.
_CDF_QS = [i / 100 for i in range(0, 100)] + [0.995, 0.999, 0.9995, 0.9999, 1.0]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; nan when empty."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def cdf_points(sorted_values: Sequence[float]) -> list[list[float]]:
    """``[[quantile, value], ...]``: enough to redraw the CDF without every sample."""
    if not sorted_values:
        return []
    return [[q, round(percentile(sorted_values, q), 4)] for q in _CDF_QS]


def lag_summary(sorted_ms: Sequence[float], *, cdf: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "samples": len(sorted_ms),
        "lag_p50_ms": round(percentile(sorted_ms, 0.5), 3),
        "lag_p99_ms": round(percentile(sorted_ms, 0.99), 3),
        "lag_p999_ms": round(percentile(sorted_ms, 0.999), 3),
        "lag_max_ms": round(sorted_ms[-1], 3) if sorted_ms else None,
        "lag_mean_ms": round(statistics.fmean(sorted_ms), 3) if sorted_ms else None,
    }
    if cdf:
        out["cdf_ms"] = cdf_points(sorted_ms)
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs`` rounded, or None when either side is missing."""
    if not ours or not theirs or theirs <= 0:
        return None
    return round(ours / theirs, 2)


# Columns shown per command (the JSON keeps every field).
COLUMNS: dict[str, list[str]] = {
    "throughput": [
        "system",
        "run",
        "pipeline",
        "mode",
        "writes_per_s",
        "replica_applied_per_s",
        "entries_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "primary_cpu",
        "replica_cpu",
        "load_cpu",
    ],
    "lag": ["system", "rate", "achieved_rate", "lag_p50_ms", "lag_p99_ms", "lag_p999_ms"],
    "fanout": [
        "system",
        "topology",
        "replicas",
        "rate",
        "achieved_rate",
        "lag_p99_ms_max",
        "lag_p99_ms_median",
        "relay_p99_ms_median",
        "relay_p99_ms_max",
        "primary_cpu",
        "primary_tcp_kb_per_s",
        "p_link_kb_per_s",
        "primary_follower_requests_per_s",
        "nodes_cpu",
        "missing_on_replica_streams",
        "bootstraps",
        "catchups",
    ],
    "bootstrap": [
        "system",
        "keys",
        "seconds",
        "mb_per_s",
        "primary_rss_growth_mib",
        "primary_fork_child_private_mib",
        "replica_peak_rss_mib",
    ],
    "catchup": ["system", "entries", "seconds", "entries_per_s", "partial", "catchups"],
    "memory": ["system", "primary_rss_mib", "replica_rss_mib"],
    "zmq": ["system", "batch", "frame_bytes", "frames_per_s", "entries_per_s", "mb_per_s"],
    "wan_link": [
        "system",
        "rtt_ms",
        "rate_mbit",
        "rtt_min_ms",
        "rtt_p50_ms",
        "rtt_max_ms",
        "bulk_mbit",
        "line_pkts_per_s",
        "line_late_mean_ms",
        "line_late_max_ms",
        "line_cpu",
    ],
    "wan_throughput": [
        "system",
        "compression",
        "values",
        "entries",
        "writes_per_s",
        "replica_applied_per_s",
        "wire_bytes_per_entry",
        "raw_over_wire",
        "primary_cpu_ms_per_mb",
        "replica_cpu_ms_per_mb",
        "extra_primary_cpu_ms_per_mb",
        "extra_replica_cpu_ms_per_mb",
    ],
    "wan_lag": [
        "system",
        "compression",
        "values",
        "rate",
        "achieved_rate",
        "one_way_ms",
        "lag_p50_ms",
        "lag_p99_ms",
        "lag_p999_ms",
        "missing_on_replica_stream",
        "primary_cpu_ms_per_mb",
        "extra_primary_cpu_ms_per_mb",
        "extra_replica_cpu_ms_per_mb",
    ],
    "wan_catchup": [
        "system",
        "compression",
        "values",
        "entries",
        "seconds",
        "entries_per_s",
        "wire_bytes_per_entry",
        "raw_over_wire",
        "partial",
        "catchups",
        "bootstraps",
    ],
}

# Metric compared per command, and whether lower is better.
RATIO_KEYS: dict[str, list[tuple[str, bool]]] = {
    "throughput": [("writes_per_s", False), ("replica_applied_per_s", False)],
    "lag": [("lag_p50_ms", True), ("lag_p99_ms", True)],
    "fanout": [("lag_p99_ms_max", True)],
    "bootstrap": [("seconds", True)],
    "catchup": [("entries_per_s", False)],
    "memory": [("primary_rss_mib", True), ("replica_rss_mib", True)],
    "wan_throughput": [("replica_applied_per_s", False), ("wire_bytes_per_entry", True)],
    "wan_lag": [("lag_p50_ms", True), ("lag_p99_ms", True)],
    "wan_catchup": [("entries_per_s", False), ("wire_bytes_per_entry", True)],
}

# The row a kevo row is compared with: same shape (pipeline, rate, replicas, WAN values).
_SHAPE = ("pipeline", "rate", "replicas", "run", "values")
_LABELS = (*_SHAPE, "mode", "compression")  # what a ratio line names of the kevo row


def _same_shape(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _SHAPE)


def add_ratios(command: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per kevo row and Redis row of the same shape: ``kevo / redis`` per metric."""
    out: list[dict[str, Any]] = []
    for ours in (r for r in rows if r.get("system") == "kevo"):
        for theirs in rows:
            if not str(theirs.get("system", "")).startswith("redis") or not _same_shape(
                ours, theirs
            ):
                continue
            entry: dict[str, Any] = {"vs": theirs["system"]}
            entry.update({k: ours.get(k) for k in _LABELS if k in ours})
            for key, _ in RATIO_KEYS.get(command, []):
                entry[f"{key}_ratio"] = ratio(ours.get(key), theirs.get(key))
            out.append(entry)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(rows: Sequence[dict[str, Any]], columns: list[str]) -> list[str]:
    columns = [c for c in columns if any(c in r for r in rows)]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return lines


def render(result: dict[str, Any]) -> str:
    """A command's result as text: its table, ratios, targets and skipped rows."""
    command = result["command"]
    lines = [f"== {command} ==", *_table(result["rows"], COLUMNS[command])]
    for r in result.get("ratios", []):
        keys = [k for k in r if k.endswith("_ratio")]
        shape = ", ".join(f"{k}={r[k]}" for k in _LABELS if k in r)
        parts = ", ".join(f"{k[:-6]} {_cell(r[k])}x" for k in keys)
        lines.append(f"kevo/{r['vs']}{f' ({shape})' if shape else ''}: {parts}")
    for t in result.get("targets", []):
        mark = "MET" if t["met"] else "MISSED"
        lines.append(f"target {mark}: {t['target']} (measured {t['measured']})")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
