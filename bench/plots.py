"""PNG plots for docs/benchmarks.md (matplotlib, Agg backend; optional dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_all"]

_STYLE = {"kevo": "-", "redis-aof-always": "--", "redis-no-aof": ":"}
_COLOR = {1000: "tab:blue", 5000: "tab:orange", 20000: "tab:red"}
_SYSTEM_COLOR = {"kevo": "tab:blue", "redis-aof-always": "tab:orange"}
_FLOOR_MS = 0.01  # the probe's resolution: smaller (or negative) lags are drawn here


def _lag_cdf(lag_results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for res in lag_results:
        for row in res["rows"]:
            points = row.get("cdf_ms")
            if not points:
                continue
            qs = [q for q, _ in points]
            ms = [max(v, _FLOOR_MS) for _, v in points]
            ax.plot(
                ms,
                qs,
                _STYLE.get(row["system"], "-"),
                color=_COLOR.get(row["rate"], "black"),
                label=f"{row['system']} {row['rate'] // 1000}k/s",
            )
    ax.set_xscale("log")
    ax.set_xlabel("commit-to-replica-applied lag (ms, log scale; <= 0.01 ms drawn at 0.01)")
    ax.set_ylabel("fraction of writes")
    ax.set_title("Replication lag CDF, one replica, open-loop single writes")
    ax.axvline(5, color="grey", lw=0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fanout(fan: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for system in ("kevo", "redis-aof-always"):
        rows = sorted(
            (r for r in fan["rows"] if r["system"] == system), key=lambda r: r["replicas"]
        )
        if not rows:
            continue
        xs = [r["replicas"] for r in rows]
        color = _SYSTEM_COLOR[system]
        worst = [r["lag_p99_ms_max"] for r in rows]
        ax.plot(xs, worst, "o" + _STYLE[system], color=color, label=f"{system}: worst replica")
        for r in rows:
            per = r["lag_p99_ms_per_replica"]
            ax.scatter([r["replicas"]] * len(per), per, s=10, alpha=0.35, color=color)
    ax.set_yscale("log")
    ax.set_xticks([r["replicas"] for r in fan["rows"]])
    ax.set_xlabel("replicas")
    ax.set_ylabel("lag p99 (ms, log scale): worst replica (line), each replica (dots)")
    ax.set_title(f"Fan-out at {fan['rows'][0]['rate']:,} writes/s")
    ax.axhline(50, color="grey", lw=0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(sections: dict[str, Any], out_dir: Path) -> list[Path]:
    """Writes lag_cdf.png and fanout_lag_p99.png from ``all``'s sections; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lags = [v for k, v in sections.items() if k.startswith("lag_")]
    if lags:
        _lag_cdf(lags, out_dir / "lag_cdf.png")
        written.append(out_dir / "lag_cdf.png")
    if "fanout" in sections:
        _fanout(sections["fanout"], out_dir / "fanout_lag_p99.png")
        written.append(out_dir / "fanout_lag_p99.png")
    return written
