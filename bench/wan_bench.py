"""``bench wan``: kevo (per compression mode) and Redis across a WAN profile (issue 14).

Primary in side ``a``, replica in side ``b`` of a ``bench.wan_net.Wan``; the load runs in
side ``a`` (bench.wan_agent), so the link carries replication only. Three shapes:

- throughput: N entries as fast as the primary takes them (C=50, D=16 batches); applied/s
  on the replica (clock: first send to the replica's Status at the last LSN), bytes side
  ``a`` put on its veth per entry, raw (key + value) / wire, the primary's and replica's CPU
  seconds per raw MB (/proc), from which the cost of compressing a MB follows;
- lag: single writes at a fixed rate below the link's capacity, listeners beside each node
  (bench/lagprobe.py), so a lag includes the one-way delay;
- catch-up: the replica stopped, N entries written, the replica restarted: seconds until it
  is READY at the last LSN, and the bytes that took.

Values: JSON-like documents (bench.compress_bench, fixed seed) or random bytes of the same
sizes. Everything (nodes by PID, agents by PID, namespaces) ends with its ``with`` block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.harness import BenchCluster, bench_cluster, replica_caught_up, wait_until
from bench.lagprobe import lags_ms
from bench.procinfo import cpu_seconds
from bench.report import lag_summary
from bench.wan_agent import Agent, mean_value_bytes
from bench.wan_net import LinkProfile, Wan
from kevo_repl.client import Client
from kevo_repl.wire import pb

__all__ = [
    "KEY_BYTES",
    "LAG_KEY_BYTES",
    "MODES",
    "cpu_per_mb",
    "kevo_catchup",
    "kevo_lag",
    "kevo_throughput",
    "wire_fields",
]

KEY_BYTES = 16  # key:%012d
LAG_KEY_BYTES = 13  # lag:%09d


MODES = ("none", "zstd")  # the replica's --compression, one row each


def wire_fields(wan: Wan, before: tuple[int, int], entries: int, values: str) -> dict[str, Any]:
    """Bytes side ``a`` sent (and received) on its veth since ``before``, per entry and
    against the entries' raw size (key + value)."""
    tx = wan.tx_bytes("a") - before[0]
    rx = wan.rx_bytes("a") - before[1]
    raw = entries * (KEY_BYTES + mean_value_bytes(values))
    return {
        "wire_mb": round(tx / 1e6, 2),
        "wire_bytes_per_entry": round(tx / max(1, entries), 1),
        "raw_bytes_per_entry": round(raw / max(1, entries), 1),
        "raw_over_wire": round(raw / max(1, tx), 2),
        "acks_bytes_per_entry": round(rx / max(1, entries), 1),
    }


def cpu_per_mb(
    cpu: list[float], entries: int, values: str, key_bytes: int = KEY_BYTES
) -> dict[str, float]:
    """CPU ms of the primary and the replica per raw MB (key + value) written."""
    raw_mb = entries * (key_bytes + mean_value_bytes(values)) / 1e6
    return {
        "primary_cpu_ms_per_mb": round(cpu[0] * 1e3 / raw_mb, 1),
        "replica_cpu_ms_per_mb": round(cpu[1] * 1e3 / raw_mb, 1),
    }


def _counters(wan: Wan) -> tuple[int, int]:
    return wan.tx_bytes("a"), wan.rx_bytes("a")


def _replica_args(primary: str, mode: str) -> list[str]:
    return ["--primary", primary, "--id", "r1", "--compression", mode]


def _start_replica(wan: Wan, cluster: BenchCluster, primary: str, mode: str, port: int = 0) -> str:
    b = wan.address("b")
    replica = cluster.spawn("replica", "r1", *_replica_args(primary, mode), port=port,
                            prefix=wan.exec_prefix("b"), host=b)  # fmt: skip
    cluster.wait_serving("r1", 60)
    return replica


@contextmanager
def kevo_pair(profile: LinkProfile, mode: str) -> Iterator[tuple[Wan, BenchCluster, str, str]]:
    """A primary (fsync=always) in side a and a READY replica of it in side b."""
    with Wan(["a", "b"], profile) as wan, bench_cluster() as cluster:
        primary = cluster.spawn("primary", "primary", "--fsync", "always",
                                prefix=wan.exec_prefix("a"), host=wan.address("a"))  # fmt: skip
        cluster.wait_serving("primary", 60)
        replica = _start_replica(wan, cluster, primary, mode)
        with Client(replica, timeout_ms=10_000) as rc:
            wait_until("replica ready", replica_caught_up(rc, 0, cluster), 60, 0.05)
        yield wan, cluster, primary, replica


def _load(wan: Wan, primary: str, entries: int, values: str, deadline_s: float,
          key_space: int = 100_000) -> dict[str, Any]:  # fmt: skip
    args = ["kevo-load", "--node", primary, "--entries", str(entries), "--values", values,
            "--key-space", str(key_space)]  # fmt: skip
    with Agent(wan.exec_prefix("a"), *args, deadline_s=deadline_s) as agent:
        out = agent.result(deadline_s + 5)
    if out["errors"]:
        raise RuntimeError(f"{out['errors']} writes failed")
    return out


def _upstream(replica: str) -> tuple[int, int]:
    """The replica's own count of bytes from its upstream: (on the wire, inflated)."""
    with Client(replica, timeout_ms=10_000) as c:
        s = c.status_message()
    return int(getattr(s, "upstream_wire_bytes", 0)), int(getattr(s, "upstream_raw_bytes", 0))


def _node_fields(before: tuple[int, int], after: tuple[int, int], entries: int) -> dict[str, Any]:
    """What the replica says it received, beside the veth's count (a cross-check)."""
    wire, raw = after[0] - before[0], after[1] - before[1]
    if wire <= 0:
        return {}
    return {
        "node_wire_bytes_per_entry": round(wire / max(1, entries), 1),
        "node_raw_over_wire": round(raw / wire, 2),
    }


def _applied(cluster: BenchCluster, replica: str, lsn: int, timeout: float) -> float:
    with Client(replica, timeout_ms=10_000) as rc:
        return wait_until("replica applied", replica_caught_up(rc, lsn, cluster), timeout, 0.02)


def _base(profile: LinkProfile, mode: str, values: str) -> dict[str, Any]:
    return {
        "system": "kevo",
        "compression": mode,
        "values": values,
        "rtt_ms": profile.rtt_ms,
        "rate_mbit": profile.rate_mbit,
    }


def kevo_throughput(
    profile: LinkProfile, mode: str, values: str, entries: int, deadline_s: float
) -> dict[str, Any]:
    with kevo_pair(profile, mode) as (wan, cluster, primary, replica):
        warm = _load(wan, primary, max(2000, entries // 20), values, deadline_s)
        _applied(cluster, replica, warm["last_lsn"], deadline_s)
        pids = (cluster.pid("primary"), cluster.pid("r1"))
        cpu0 = [cpu_seconds(p) for p in pids]
        before, node0 = _counters(wan), _upstream(replica)
        load = _load(wan, primary, entries, values, deadline_s)
        done = _applied(cluster, replica, load["last_lsn"], deadline_s)
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        wire = wire_fields(wan, before, load["entries"], values)
        wire.update(_node_fields(node0, _upstream(replica), load["entries"]))
    return {
        **_base(profile, mode, values),
        "entries": load["entries"],
        "writes_per_s": round(load["entries"] / load["seconds"]),
        "replica_applied_per_s": round(load["entries"] / (done - load["started"])),
        "latency_p50_ms": load["latency_p50_ms"],
        "latency_p99_ms": load["latency_p99_ms"],
        **wire,
        "primary_cpu_s": round(cpu[0], 2),
        "replica_cpu_s": round(cpu[1], 2),
        **cpu_per_mb(cpu, load["entries"], values),
    }


def kevo_lag(
    profile: LinkProfile, mode: str, values: str, rate: int, seconds: float
) -> dict[str, Any]:
    """Single puts at ``rate``/s from side a; listeners on the primary (a) and replica (b)."""
    total = int(rate * seconds)
    limit = seconds * 3 + 60
    with kevo_pair(profile, mode) as (wan, cluster, primary, replica):
        args = ["--target", replica, "--kind", "kevo"]
        with Agent(wan.exec_prefix("b"), "listen", *args, deadline_s=limit + 60) as listen:
            listen.expect("ready")
            paced = ["paced", "--kind", "kevo", "--target", primary, "--rate", str(rate),
                     "--total", str(total), "--values", values]  # fmt: skip
            pids = (cluster.pid("primary"), cluster.pid("r1"))
            cpu0 = [cpu_seconds(p) for p in pids]
            with Agent(wan.exec_prefix("a"), *paced, deadline_s=limit + 60) as writer:
                last = int(writer.expect("written", limit).split()[1])
                _applied(cluster, replica, last, 120)
                cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
                writer.stop()
                listen.stop()
                w, r = writer.result(), listen.result()
    lags, missing = lags_ms(_seen(w), _seen(r))
    return {
        **_base(profile, mode, values),
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(len(w["seen"]) / w["seconds"]),
        "one_way_ms": profile.rtt_ms / 2,
        "missing_on_replica_stream": missing,
        **lag_summary(lags),
        **cpu_per_mb(cpu, total, values, LAG_KEY_BYTES),
    }


def _seen(out: dict[str, Any]) -> dict[int, int]:
    return {int(k): int(v) for k, v in out["seen"].items()}


def _info(primary: str) -> pb.ReplicaInfo:
    with Client(primary, timeout_ms=10_000) as c:
        return next(r for r in c.status_message().replicas if r.replica_id == "r1")


def kevo_catchup(
    profile: LinkProfile, mode: str, values: str, entries: int, deadline_s: float
) -> dict[str, Any]:
    """The replica stopped, ``entries`` written, restarted: seconds to READY at the last LSN."""
    with kevo_pair(profile, mode) as (wan, cluster, primary, replica):
        port = cluster.port("r1")
        cluster.stop_node("r1")
        load = _load(wan, primary, entries, values, deadline_s, key_space=max(entries, 100_000))
        info0 = _info(primary)
        before = _counters(wan)
        cpu0 = cpu_seconds(cluster.pid("primary"))
        start = time.monotonic()
        _start_replica(wan, cluster, primary, mode, port=port)
        done = _applied(cluster, replica, load["last_lsn"], deadline_s)
        cpu = cpu_seconds(cluster.pid("primary")) - cpu0
        wire = wire_fields(wan, before, entries, values)
        wire.update(_node_fields((0, 0), _upstream(replica), entries))  # a new process
        info = _info(primary)
    seconds = done - start
    return {
        **_base(profile, mode, values),
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds),
        **wire,
        "primary_cpu_s": round(cpu, 2),
        "catchups": int(info.catchups - info0.catchups),
        "bootstraps": int(info.bootstraps - info0.bootstraps),
    }
