"""The "Relay tree at scale" table of docs/benchmarks.md from a saved fan-out run:

    python -m bench fanout --replicas 16,64 --tree 4x16,4x32,4x64 ... --json > FILE
    python -m bench.tree_docgen FILE

One row per topology: lag per depth, whether the tree kept up, and what the primary paid
(CPU, bytes sent, copies of its stream, requests from followers), so that flat and tree
rows at one rate read side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["tree_markdown"]

HEADER = [
    "topology",
    "primary's followers",
    "rate/s (achieved)",
    "relay p50 / p99 ms (worst p99)",
    "leaf p50 / p99 ms (worst p99)",
    "converged s",
    "primary CPU cores (us/write)",
    "entries/group",
    "primary sent KB/s: TCP / veth",
    "copies",
    "follower req/s",
    "all nodes CPU",
    "missing / bootstraps / catch-ups / gaps",
]


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _depth(r: dict[str, Any], depth: str) -> str:
    if f"{depth}_p99_ms_median" not in r:
        return "-"
    p50, p99 = r[f"{depth}_p50_ms_median"], r[f"{depth}_p99_ms_median"]
    return f"{_n(p50)} / {_n(p99)} ({_n(r[f'{depth}_p99_ms_max'])})"


def _row(r: dict[str, Any]) -> list[str]:
    direct = r.get("relays") or r.get("replicas")
    health = (r["missing_on_replica_streams"], r["bootstraps"], r["catchups"], r["gaps"])
    return [
        r["topology"],
        _n(direct),
        f"{_n(r['rate'])} ({_n(r['achieved_rate'])})",
        _depth(r, "relay"),
        _depth(r, "leaf"),
        _n(r.get("converge_s")),
        f"{_n(r['primary_cpu'])} ({_n(r['primary_cpu_us_per_write'])})",
        _n(r.get("primary_group_entries_mean")),
        f"{_n(r['primary_tcp_kb_per_s'])} / {_n(r.get('p_link_kb_per_s'))}",
        _n(r.get("primary_copies_sent")),
        _n(r.get("primary_follower_requests_per_s")),
        _n(r["nodes_cpu"]),
        " / ".join(_n(x) for x in health),
    ]


def tree_markdown(res: dict[str, Any]) -> str:
    """The table, then the machine and load the run saw."""
    rows = [r for r in res["rows"] if r.get("system") == "kevo"]
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(_row(r)) + " |" for r in rows]
    m = res.get("machine", {})
    placement = sorted({r.get("placement", "?") for r in rows})
    compression = sorted({r.get("compression", "?") for r in rows})
    out += [
        "",
        f"Nodes on {', '.join(placement)}, replicas' compression {', '.join(compression)}; "
        f"{m.get('nproc')} cores, {m.get('mem_gib')} GiB, Linux {m.get('kernel')}, CPython "
        f"{m.get('python')}, {m.get('tmp_fs')}; load average before {m.get('load_avg_before')},"
        f" after {m.get('load_avg')}.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(tree_markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
