"""kevo-repl end to end: replicated write throughput, commit-to-applied lag, fan-out.

Throughput: one primary (fsync=always) and one replica; ``clients`` logical clients over
several load processes (bench/loadgen.py) write 100 B values to random keys over 100k;
entries/s committed on the primary, and entries/s applied on the replica (the clock stops
when the replica's Status shows the last LSN).

Lag and fan-out: an open-loop writer sends single puts at a fixed rate; listener processes
on the primary's and every replica's PUB time each LSN (bench/lagprobe.py).
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from bench.harness import BenchCluster, bench_cluster, replica_caught_up, wait_until
from bench.lagprobe import lags_ms, listeners, paced
from bench.loadgen import run_load
from bench.procinfo import cpu_seconds, reaped_children_cpu
from bench.report import lag_summary, percentile
from kevo_repl.client import Client
from kevo_repl.wire import pb

__all__ = ["cpu_shares", "run_fanout", "run_lag", "run_throughput"]


def _pair(cluster: BenchCluster, replicas: int = 1) -> tuple[str, list[str]]:
    """A primary (fsync=always) and ``replicas`` replicas, all READY."""
    primary = cluster.start("primary", "primary", "--fsync", "always")
    names = [f"r{i + 1}" for i in range(replicas)]
    addresses = [cluster.spawn("replica", n, "--primary", primary, "--id", n) for n in names]
    for n in names:
        cluster.wait_serving(n, timeout=60)
    for address in addresses:
        with Client(address, timeout_ms=5000) as c:
            wait_until("replica ready", replica_caught_up(c, 0, cluster), 60, every=0.05)
    return primary, addresses


def run_throughput(
    clients: int = 50,
    pipeline: int = 16,
    requests: int = 200_000,
    mode: str = "batch",
    procs: int = 2,
) -> dict[str, Any]:
    """``requests`` entries (SETs in redis-benchmark's ``-n``), committed and replicated."""
    with bench_cluster() as cluster:
        primary, (replica,) = _pair(cluster)
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


def _write_paced(primary: str, rate: int, total: int) -> tuple[float, int]:
    """Single puts at ``rate``/s over one DEALER; returns (seconds, last LSN acked)."""
    value = b"x" * 100
    frames = [
        pb.Request(
            request_id=n + 1, put=pb.PutRequest(key=b"lag:%09d" % n, value=value)
        ).SerializeToString()
        for n in range(total)
    ]
    last = 0
    with Client(primary, timeout_ms=10_000) as c:
        sock = c._sock  # open loop: sends on schedule, replies drained apart

        def send(n: int) -> None:
            sock.send(frames[n])

        def drain() -> None:
            nonlocal last
            while True:
                try:
                    resp = pb.Response.FromString(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    return
                last = max(last, resp.write.lsn)

        seconds = paced(send, drain, rate, total)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and last < total:
            if sock.poll(100, zmq.POLLIN):
                drain()
    return seconds, last


def _measure(rate: int, seconds: float, replicas: int) -> dict[str, Any]:
    total = int(rate * seconds)
    with bench_cluster() as cluster:
        primary, addresses = _pair(cluster, replicas)
        with listeners("kevo", [primary, *addresses]) as collect:
            elapsed, last = _write_paced(primary, rate, total)
            for address in addresses:
                with Client(address, timeout_ms=10_000) as rc:
                    wait_until("replicas converge", replica_caught_up(rc, last, cluster), 120, 0.01)
            seen = collect()
        with Client(primary, timeout_ms=10_000) as pc:
            infos = list(pc.status().replicas)
    per_replica = [lags_ms(seen[0], s) for s in seen[1:]]
    return {
        "elapsed": elapsed,
        "written": len(seen[0]),
        "per_replica": per_replica,
        "bootstraps": sum(int(i.bootstraps) for i in infos),
        "catchups": sum(int(i.catchups) for i in infos),
    }


def run_lag(rate: int = 5000, seconds: float = 10, cdf: bool = False) -> dict[str, Any]:
    """Commit (primary PUB) to applied (replica PUB) lag at a fixed open-loop rate."""
    m = _measure(rate, seconds, 1)
    lags, missing = m["per_replica"][0]
    return {
        "system": "kevo",
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "missing_on_replica_stream": missing,
        **lag_summary(lags, cdf=cdf),
    }


def run_fanout(replicas: int, rate: int = 5000, seconds: float = 10) -> dict[str, Any]:
    """One primary and ``replicas`` replicas at ``rate``: lag p99 per replica."""
    m = _measure(rate, seconds, replicas)
    p99 = [lag_summary(lags)["lag_p99_ms"] for lags, _ in m["per_replica"]]
    p50 = [lag_summary(lags)["lag_p50_ms"] for lags, _ in m["per_replica"]]
    return {
        "system": "kevo",
        "replicas": replicas,
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "lag_p50_ms_per_replica": p50,
        "lag_p99_ms_per_replica": p99,
        "lag_p99_ms_max": max(p99),
        "missing_on_replica_streams": sum(missing for _, missing in m["per_replica"]),
        "bootstraps": m["bootstraps"],
        "catchups": m["catchups"],
    }
