"""kevo-repl end to end: replicated write throughput, commit-to-applied lag, fan-out.

Throughput: one primary (fsync=always) and one replica; ``clients`` logical clients over
several load processes (bench/loadgen.py) write 100 B values to random keys over 100k;
entries/s committed on the primary, and entries/s applied on the replica (the clock stops
when the replica's Status shows the last LSN).

Lag and fan-out: an open-loop writer sends single puts at a fixed rate; listener processes
on the primary's and every replica's PUB time each LSN (bench/lagprobe.py). A replica
publishes a record once it is durable in its own WAL (an fdatasync per received record
group) and applied, so every lag includes that fdatasync. The fan-out is flat (R replicas
of the primary) or a relay tree (R relays following the primary, L leaves following the
relays): a leaf's lag is then two hops, primary -> relay -> leaf.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from bench.harness import BenchCluster, bench_cluster, replica_caught_up, wait_until
from bench.lagprobe import lags_ms, listener_groups, listeners, paced
from bench.loadgen import run_load
from bench.procinfo import cpu_seconds, reaped_children_cpu
from bench.report import lag_summary, percentile
from kevo_repl.client import Client
from kevo_repl.wire import pb

__all__ = ["Topology", "cpu_shares", "run_fanout", "run_lag", "run_throughput", "run_tree"]


@dataclass
class Topology:
    """Who follows whom: relays follow the primary; leaves follow a relay (or the primary,
    in a flat fan-out, which has no relays). ``pids``: primary, relays, leaves in order."""

    primary: str
    relays: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @property
    def followers(self) -> list[str]:
        return [*self.relays, *self.leaves]


def _follow(cluster: BenchCluster, specs: list[tuple[str, str]], timeout: float) -> list[str]:
    """Start a replica per (name, upstream), all at once; returns addresses once all READY."""
    argv = [(n, ["--primary", up, "--id", n]) for n, up in specs]
    addresses = cluster.start_all("replica", argv, timeout)
    for address in addresses:
        with Client(address, timeout_ms=5000) as c:
            wait_until("replica ready", replica_caught_up(c, 0, cluster), timeout, every=0.05)
    return addresses


def _pair(cluster: BenchCluster, replicas: int = 1) -> tuple[str, list[str]]:
    """A primary (fsync=always) and ``replicas`` replicas, all READY."""
    primary = cluster.start("primary", "primary", "--fsync", "always")
    names = [f"r{i + 1}" for i in range(replicas)]
    return primary, _follow(cluster, [(n, primary) for n in names], 60)


def _flat(cluster: BenchCluster, replicas: int) -> Topology:
    primary, addresses = _pair(cluster, replicas)
    pids = [cluster.pid("primary"), *(cluster.pid(f"r{i + 1}") for i in range(replicas))]
    return Topology(primary, [], addresses, pids)


def _tree(cluster: BenchCluster, relays: int, leaves: int) -> Topology:
    """A primary, ``relays`` replicas of it, and ``leaves`` replicas of the relays (leaf i
    follows relay i mod R, so the relays have L/R leaves each, +-1)."""
    primary = cluster.start("primary", "primary", "--fsync", "always")
    timeout = 60 + leaves  # dozens of processes starting on two cores
    relay_names = [f"r{i + 1}" for i in range(relays)]
    relay_addresses = _follow(cluster, [(n, primary) for n in relay_names], timeout)
    leaf_names = [f"l{i + 1}" for i in range(leaves)]
    specs = [(n, relay_addresses[i % relays]) for i, n in enumerate(leaf_names)]
    leaf_addresses = _follow(cluster, specs, timeout)
    pids = [cluster.pid(n) for n in ("primary", *relay_names, *leaf_names)]
    return Topology(primary, relay_addresses, leaf_addresses, pids)


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


def _measure(
    rate: int, seconds: float, build: Callable[[BenchCluster], Topology], listener_procs: int = 0
) -> dict[str, Any]:
    """Paced writes through the topology ``build`` starts; lags per follower (relays first),
    bootstraps and catch-ups from the primary's and relays' Status, CPU cores per node."""
    total = int(rate * seconds)
    with bench_cluster() as cluster:
        topo = build(cluster)
        with listeners("kevo", [topo.primary, *topo.followers], listener_procs) as collect:
            cpu0 = [cpu_seconds(p) for p in topo.pids]
            elapsed, last = _write_paced(topo.primary, rate, total)
            cpu = [(cpu_seconds(p) - c0) / elapsed for p, c0 in zip(topo.pids, cpu0, strict=True)]
            gaps = 0
            for address in topo.followers:
                with Client(address, timeout_ms=10_000) as rc:
                    wait_until("replicas converge", replica_caught_up(rc, last, cluster), 120, 0.01)
                    gaps += int(rc.status_message().gaps)
            seen = collect()
        infos = []
        for address in [topo.primary, *topo.relays]:
            with Client(address, timeout_ms=10_000) as c:
                infos += list(c.status_message().replicas)
    per_follower = [lags_ms(seen[0], s) for s in seen[1:]]
    return {
        "elapsed": elapsed,
        "written": len(seen[0]),
        "per_relay": per_follower[: len(topo.relays)],
        "per_replica": per_follower[len(topo.relays) :],  # the leaves
        "bootstraps": sum(int(i.bootstraps) for i in infos),
        "catchups": sum(int(i.catchups) for i in infos),
        "gaps": gaps,
        "cpu": cpu,
        "relays": len(topo.relays),
        "listener_procs": len(listener_groups(len(topo.pids), listener_procs)),
    }


def _cpu_figures(m: dict[str, Any]) -> dict[str, Any]:
    """Cores used while the writes ran: the primary, a relay and a leaf on average, all nodes."""
    cpu, r = m["cpu"], m["relays"]
    out = {"primary_cpu": round(cpu[0], 3)}
    if r:
        out["relay_cpu_mean"] = round(statistics.fmean(cpu[1 : 1 + r]), 3)
    out["leaf_cpu_mean" if r else "replica_cpu_mean"] = round(statistics.fmean(cpu[1 + r :]), 3)
    out["nodes_cpu"] = round(sum(cpu), 2)
    out["listener_procs"] = m["listener_procs"]
    return out


def run_lag(rate: int = 5000, seconds: float = 10, cdf: bool = False) -> dict[str, Any]:
    """Commit (primary PUB) to applied (replica PUB) lag at a fixed open-loop rate."""
    m = _measure(rate, seconds, lambda c: _flat(c, 1))
    lags, missing = m["per_replica"][0]
    return {
        "system": "kevo",
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "missing_on_replica_stream": missing,
        **lag_summary(lags, cdf=cdf),
    }


def _p(per: list[tuple[list[float], int]], key: str) -> list[float]:
    return [lag_summary(lags)[key] for lags, _ in per]


def run_fanout(
    replicas: int, rate: int = 5000, seconds: float = 10, listener_procs: int = 0
) -> dict[str, Any]:
    """One primary and ``replicas`` replicas at ``rate``: lag p99 per replica."""
    m = _measure(rate, seconds, lambda c: _flat(c, replicas), listener_procs)
    p99 = _p(m["per_replica"], "lag_p99_ms")
    return {
        "system": "kevo",
        "topology": f"flat {replicas}",
        "replicas": replicas,
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "lag_p50_ms_per_replica": _p(m["per_replica"], "lag_p50_ms"),
        "lag_p99_ms_per_replica": p99,
        "lag_p99_ms_max": max(p99),
        "lag_p99_ms_median": round(statistics.median(p99), 3),
        "missing_on_replica_streams": sum(missing for _, missing in m["per_replica"]),
        "bootstraps": m["bootstraps"],
        "catchups": m["catchups"],
        "gaps": m["gaps"],
        **_cpu_figures(m),
    }


def run_tree(
    relays: int, leaves: int, rate: int = 5000, seconds: float = 10, listener_procs: int = 0
) -> dict[str, Any]:
    """Primary -> ``relays`` relays -> ``leaves`` leaves at ``rate``: a leaf's lag runs from
    the commit on the primary's PUB to the apply on the leaf's PUB (two hops)."""
    m = _measure(rate, seconds, lambda c: _tree(c, relays, leaves), listener_procs)
    p99 = _p(m["per_replica"], "lag_p99_ms")
    relay_p99 = _p(m["per_relay"], "lag_p99_ms")
    return {
        "system": "kevo",
        "topology": f"tree {relays}x{leaves}",
        "relays": relays,
        "leaves": leaves,
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "lag_p50_ms_per_leaf": _p(m["per_replica"], "lag_p50_ms"),
        "lag_p99_ms_per_leaf": p99,
        "lag_p50_ms_per_relay": _p(m["per_relay"], "lag_p50_ms"),
        "lag_p99_ms_per_relay": relay_p99,
        "lag_p99_ms_max": max(p99),
        "lag_p99_ms_median": round(statistics.median(p99), 3),
        "relay_p99_ms_max": max(relay_p99),
        "missing_on_replica_streams": sum(n for _, n in m["per_replica"] + m["per_relay"]),
        "bootstraps": m["bootstraps"],
        "catchups": m["catchups"],
        "gaps": m["gaps"],
        **_cpu_figures(m),
    }
