"""kevo-repl end to end: replicated write throughput and commit-to-applied lag.

Throughput: one primary (fsync=always) and one replica; ``clients`` logical clients over
several load processes (bench/loadgen.py) write 100 B values to random keys over 100k;
entries/s committed on the primary, and entries/s applied on the replica (the clock stops
when the replica's Status shows the last LSN).

Lag: an open-loop writer sends single puts at a fixed rate; listener processes on the
primary's and the replica's PUB time each LSN (bench/lagprobe.py). A replica publishes a
record once applied (its primary had it durable). Fan-out and relay trees, which measure
the same way with more followers: bench/fanout_bench.py.
"""

from __future__ import annotations

from typing import Any

from bench.fanout_bench import measure
from bench.harness import bench_cluster, replica_caught_up, wait_until
from bench.loadgen import run_load
from bench.procinfo import cpu_seconds, reaped_children_cpu
from bench.report import lag_summary, percentile
from bench.topology import flat, pair
from kevo_repl.client import Client

__all__ = ["cpu_shares", "run_lag", "run_throughput"]


def run_throughput(
    clients: int = 50,
    pipeline: int = 16,
    requests: int = 200_000,
    mode: str = "batch",
    procs: int = 2,
) -> dict[str, Any]:
    """``requests`` entries (SETs in redis-benchmark's ``-n``), committed and replicated."""
    with bench_cluster() as cluster:
        primary, (replica,) = pair(cluster)
        warm = max(clients * pipeline * 4, requests // 20)
        run_load(primary, clients=clients, depth=pipeline, entries=warm, mode=mode, procs=procs)
        pids = (cluster.pid("primary"), cluster.pid("r1"))
        cpu0 = [cpu_seconds(p) for p in pids] + [reaped_children_cpu()]
        load = run_load(
            primary, clients=clients, depth=pipeline, entries=requests, mode=mode, procs=procs
        )
        cpu = [cpu_seconds(p) for p in pids] + [reaped_children_cpu()]
        with Client(replica, timeout_ms=10_000) as rc:
            done = wait_until(
                "replica applied", replica_caught_up(rc, load.last_lsn, cluster), 120, 0.002
            )
    lat = load.latency_ms
    return {
        "system": "kevo",
        "clients": clients,
        "pipeline": pipeline,
        "mode": mode,
        "load_procs": procs,
        "entries": load.entries,
        "errors": load.errors,
        "writes_per_s": round(load.entries / load.seconds),
        "replica_applied_per_s": round(load.entries / (done - load.started)),
        "latency_p50_ms": round(percentile(lat, 0.5), 3),
        "latency_p99_ms": round(percentile(lat, 0.99), 3),
        **cpu_shares(cpu0, cpu, load.seconds),
    }


def cpu_shares(before: list[float], after: list[float], seconds: float) -> dict[str, float]:
    """Cores used while the load ran: primary, replica, load generator (in that order)."""
    names = ("primary_cpu", "replica_cpu", "load_cpu")
    return {n: round((a - b) / seconds, 2) for n, b, a in zip(names, before, after, strict=True)}


def run_lag(rate: int = 5000, seconds: float = 10, cdf: bool = False) -> dict[str, Any]:
    """Commit (primary PUB) to applied (replica PUB) lag at a fixed open-loop rate."""
    m = measure(rate, seconds, lambda c: flat(c, 1))
    lags, missing = m["per_replica"][0]
    return {
        "system": "kevo",
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "missing_on_replica_stream": missing,
        **lag_summary(lags, cdf=cdf),
    }
