"""Markdown tables for docs/benchmarks.md from a saved ``python -m bench all --save`` file
(or ``python -m bench wan --save``: its own tables).

python -m bench.docgen bench/results/latest.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "wan_markdown"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def _ratio(section: dict[str, Any], row: dict[str, Any], key: str) -> Any:
    for r in section.get("ratios", []):
        same = all(r.get(k) == row.get(k) for k in ("pipeline", "mode", "rate", "replicas", "run"))
        if r["vs"] == "redis-aof-always" and same and row["system"] == "kevo":
            return r.get(f"{key}_ratio")
    return None


def _throughput(s: dict[str, Any]) -> list[str]:
    rows = []
    for r in s["rows"]:
        if r["system"] == "pyzmq-pub-sub":
            name = f"raw pyzmq PUB->SUB, {r['batch']} entries/frame"
            rows.append([name, r["batch"], "-", "-", "-", r["entries_per_s"], "-", "-", "-"])
            continue
        name = f"{r['system']} ({r['mode']})" if "mode" in r else r["system"]
        if "run" in r:
            name += f", run {r['run']}"
        ratio = _ratio(s, r, "writes_per_s")
        cpu = f"{r['primary_cpu']} / {r['replica_cpu']} / {r['load_cpu']}"
        rows.append([name, r["pipeline"], r["writes_per_s"], ratio, r["replica_applied_per_s"]])
        rows[-1] += ["-", r["latency_p50_ms"], r["latency_p99_ms"], cpu]
    header = ["system", "D", "writes/s", "x Redis AOF", "replica applied/s", "raw entries/s"]
    return _table([*header, "p50 ms", "p99 ms", "CPU cores: primary / replica / load"], rows)


def _lag(sections: dict[str, Any]) -> list[str]:
    rows = []
    for name, s in sections.items():
        if not name.startswith("lag_"):
            continue
        for r in s["rows"]:
            row = [r["system"], r["rate"], r["achieved_rate"], r["lag_p50_ms"], r["lag_p99_ms"]]
            rows.append([*row, r["lag_p999_ms"], r["lag_max_ms"], _ratio(s, r, "lag_p99_ms")])
    header = ["system", "rate/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"]
    return _table([*header, "p99 x Redis AOF"], rows)


def _fanout(s: dict[str, Any]) -> list[str]:
    rows = []
    for r in s["rows"]:
        per = r.get("lag_p99_ms_per_replica") or r["lag_p99_ms_per_leaf"]
        rows.append(
            [
                r["system"],
                r.get("replicas", r.get("topology")),
                r["lag_p99_ms_max"],
                round(statistics.median(per), 3),
                r.get("bootstraps", "-"),
                r.get("catchups", "-"),
                r["missing_on_replica_streams"],
            ]
        )
    header = ["system", "replicas", "worst p99 ms", "median p99 ms", "bootstraps", "catch-ups"]
    return _table([*header, "writes missing"], rows)


def _simple(s: dict[str, Any], keys: list[str]) -> list[str]:
    rows = [[r.get(k, "-") for k in keys] for r in s["rows"]]
    return _table(keys, rows)


def markdown(res: dict[str, Any]) -> str:
    sec = res["sections"]
    m = res["machine"]
    out = [
        f"Machine: {m['nproc']} cores, {m['mem_gib']} GiB, Linux {m['kernel']}, "
        f"CPython {m['python']}, temp dir on {m['tmp_fs']}; load average before the run "
        f"{m['load_avg_before']}, after {m['load_avg']}; the run took {res['minutes']} min.",
        "",
        "### Throughput (C = 50)",
        "",
        *_throughput(sec["throughput_p1"]),
        *_throughput(sec["throughput_p16"])[2:],
        "",
        "### Lag",
        "",
        *_lag(sec),
        "",
        "### Fan-out at 5,000 writes/s",
        "",
        *_fanout(sec["fanout"]),
        "",
        "### Bootstrap (full sync) of 1M keys",
        "",
        *_simple(
            sec["bootstrap"],
            [
                "system",
                "keys",
                "seconds",
                "mb_per_s",
                "primary_rss_growth_mib",
                "primary_anon_growth_mib",
                "primary_fork_child_private_mib",
                "replica_peak_rss_mib",
            ],
        ),
        "",
        "### Catch-up (partial resync) of 1M entries",
        "",
        *_simple(sec["catchup"], ["system", "entries", "seconds", "entries_per_s", "partial"]),
        "",
        "### Idle memory",
        "",
        *_simple(sec["memory"], ["system", "primary_rss_mib", "replica_rss_mib"]),
        "",
        "### Targets",
        "",
        *_table(
            ["target", "measured", "met"],
            [
                [t["target"], t["measured"], t["met"]]
                for s in sec.values()
                for t in s.get("targets", [])
            ],
        ),
    ]
    return "\n".join(out) + "\n"


_WAN_TABLES = {
    "wan_link": ("The link", ["system", "rtt_ms", "rate_mbit", "rtt_min_ms", "rtt_p50_ms",
                              "rtt_max_ms", "bulk_mbit", "line_pkts_per_s", "line_late_max_ms",
                              "line_cpu"]),
    "wan_throughput": ("Replicated throughput", ["system", "compression", "values",
                       "writes_per_s", "replica_applied_per_s", "wire_bytes_per_entry",
                       "raw_over_wire", "primary_cpu_ms_per_mb", "extra_primary_cpu_ms_per_mb",
                       "extra_replica_cpu_ms_per_mb"]),
    "wan_lag": ("Lag at a fixed rate", ["system", "compression", "values", "rate",
                "one_way_ms", "lag_p50_ms", "lag_p99_ms", "lag_p999_ms",
                "extra_primary_cpu_ms_per_mb", "extra_replica_cpu_ms_per_mb"]),
    "wan_catchup": ("Catch-up", ["system", "compression", "values", "entries", "seconds",
                    "entries_per_s", "wire_bytes_per_entry", "raw_over_wire", "partial"]),
}  # fmt: skip


def wan_markdown(res: dict[str, Any]) -> str:
    """The ``bench wan`` tables: a heading per section, its rows, its ratios to Redis."""
    p, m = res["profile"], res["machine"]
    out = [
        f"Profile: RTT {p['rtt_ms']} ms, jitter {p['jitter_ms']} ms, {p['rate_mbit']} Mbit/s "
        f"each way, loss {p['loss_pct']} %. Machine: {m['nproc']} cores, Linux {m['kernel']}, "
        f"CPython {m['python']}; load average before {m['load_avg_before']}, after "
        f"{m['load_avg']}.",
    ]
    for name, (title, keys) in _WAN_TABLES.items():
        if name not in res["sections"]:
            continue
        s = res["sections"][name]
        out += ["", f"### {title}", "", *_simple(s, keys)]
        ratios = []
        for r in s.get("ratios", []):
            label = ", ".join(f"{k}={r[k]}" for k in ("values", "compression") if k in r)
            parts = ", ".join(f"{k[:-6]} {_fmt(v)}x" for k, v in r.items() if k.endswith("_ratio"))
            ratios.append(f"- kevo ({label}) / {r['vs']}: {parts}")
        out += ["", *ratios] if ratios else []
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    saved = json.loads(Path(sys.argv[1]).read_text())
    print(wan_markdown(saved) if saved.get("command") == "wan" else markdown(saved), end="")
