"""The Redis rows of ``bench wan``: primary (AOF always) in side a, replica in side b.

The same shapes as bench.wan_bench's kevo rows, the same values and the same link: the load
(``redis-cli --pipe`` in side a) and the lag probes (keyspace notifications, listeners beside
each server) run inside the sides; the benchmark polls INFO over the control veth. Partial
resync: the replica stopped with ``SHUTDOWN SAVE`` and restarted keeps its replication id
and offset; the backlog is sized to hold every entry written meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.harness import wait_until
from bench.lagprobe import lags_ms
from bench.procinfo import cpu_seconds
from bench.redis_server import AOF_ALWAYS, RedisCluster, redis_cluster
from bench.report import lag_summary
from bench.wan_agent import Agent, mean_value_bytes
from bench.wan_bench import KEY_BYTES, LAG_KEY_BYTES, cpu_per_mb, wire_fields
from bench.wan_net import LinkProfile, Wan

__all__ = ["redis_catchup", "redis_lag", "redis_throughput"]

SYSTEM = "redis-aof-always"


def _backlog(entries: int, values: str) -> str:
    """A backlog that holds ``entries`` SETs of these values (RESP adds ~30 B each)."""
    per = KEY_BYTES + mean_value_bytes(values) + 40
    return f"{int(entries * per / 2**20) + 64}mb"


@contextmanager
def redis_pair(profile: LinkProfile, backlog: str = "256mb") -> Iterator[tuple[Wan, RedisCluster]]:
    """Primary ``primary`` in side a, replica ``r1`` in side b, streaming."""
    with Wan(["a", "b"], profile) as wan, redis_cluster() as cluster:
        a = wan.address("a")
        port = cluster.start("primary", *AOF_ALWAYS, "--repl-backlog-size", backlog,
                             prefix=wan.exec_prefix("a"), host=a)  # fmt: skip
        cluster.start("r1", replica_of=port, prefix=wan.exec_prefix("b"), host=wan.address("b"),
                      primary_host=a)  # fmt: skip
        wait_until("redis r1 synced", lambda: cluster.synced("r1"), 60, 0.02)
        wait_until("redis replica online", lambda: cluster.online("primary") == 1, 30, 0.02)
        with cluster.resp("primary") as r:  # the stream flows once a write reached it
            r.call("SET", "probe", "1")
        _converged(cluster, 30)
        yield wan, cluster


def _converged(cluster: RedisCluster, timeout: float) -> float:
    return wait_until("redis replica", lambda: cluster.caught_up("r1", "primary"), timeout, 0.02)


def _load(wan: Wan, port: int, entries: int, values: str, deadline_s: float,
          key_space: int = 100_000) -> dict[str, Any]:  # fmt: skip
    args = ["redis-load", "--port", str(port), "--entries", str(entries), "--values", values,
            "--key-space", str(key_space)]  # fmt: skip
    with Agent(wan.exec_prefix("a"), *args, deadline_s=deadline_s) as agent:
        return agent.result(deadline_s + 5)


def _base(profile: LinkProfile, values: str) -> dict[str, Any]:
    return {"system": SYSTEM, "compression": "-", "values": values, "rtt_ms": profile.rtt_ms,
            "rate_mbit": profile.rate_mbit}  # fmt: skip


def redis_throughput(
    profile: LinkProfile, values: str, entries: int, deadline_s: float
) -> dict[str, Any]:
    with redis_pair(profile) as (wan, cluster):
        port = cluster.procs["primary"][1]
        warm = _load(wan, port, max(2000, entries // 20), values, deadline_s)
        assert warm["entries"]
        _converged(cluster, deadline_s)
        pids = (cluster.pid("primary"), cluster.pid("r1"))
        cpu0 = [cpu_seconds(p) for p in pids]
        before = wan.tx_bytes("a"), wan.rx_bytes("a")
        load = _load(wan, port, entries, values, deadline_s)
        done = _converged(cluster, deadline_s)
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        wire = wire_fields(wan, before, entries, values)
    return {
        **_base(profile, values),
        "entries": entries,
        "writes_per_s": round(entries / load["seconds"]),
        "replica_applied_per_s": round(entries / (done - load["started"])),
        **wire,
        "primary_cpu_s": round(cpu[0], 2),
        "replica_cpu_s": round(cpu[1], 2),
        **cpu_per_mb(cpu, entries, values),
    }


def redis_lag(profile: LinkProfile, values: str, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    limit = seconds * 3 + 60
    with redis_pair(profile) as (wan, cluster):
        port, replica_port = cluster.procs["primary"][1], cluster.procs["r1"][1]
        listen_args = ["listen", "--kind", "redis", "--target", str(replica_port)]
        with Agent(wan.exec_prefix("b"), *listen_args, deadline_s=limit + 60) as listen:
            listen.expect("ready")
            paced = ["paced", "--kind", "redis", "--target", str(port), "--rate", str(rate),
                     "--total", str(total), "--values", values]  # fmt: skip
            pids = (cluster.pid("primary"), cluster.pid("r1"))
            cpu0 = [cpu_seconds(p) for p in pids]
            with Agent(wan.exec_prefix("a"), *paced, deadline_s=limit + 60) as writer:
                writer.expect("written", limit)
                _converged(cluster, 120)
                cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
                writer.stop()
                listen.stop()
                w, r = writer.result(), listen.result()
    seen_w = {int(k): int(v) for k, v in w["seen"].items()}
    lags, missing = lags_ms(seen_w, {int(k): int(v) for k, v in r["seen"].items()})
    return {
        **_base(profile, values),
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(len(seen_w) / w["seconds"]),
        "one_way_ms": profile.rtt_ms / 2,
        "missing_on_replica_stream": missing,
        **lag_summary(lags),
        **cpu_per_mb(cpu, total, values, LAG_KEY_BYTES),
    }


def redis_catchup(
    profile: LinkProfile, values: str, entries: int, deadline_s: float
) -> dict[str, Any]:
    """Replica stopped (SHUTDOWN SAVE), ``entries`` SETs, restarted: seconds to converge."""
    with redis_pair(profile, _backlog(entries, values)) as (wan, cluster):
        port, replica_port = cluster.procs["primary"][1], cluster.procs["r1"][1]
        cluster.shutdown_save("r1")
        _load(wan, port, entries, values, deadline_s, key_space=max(entries, 100_000))
        with cluster.resp("primary") as r:
            partial0 = int(r.info("stats")["sync_partial_ok"])
        before = wan.tx_bytes("a"), wan.rx_bytes("a")
        cpu0 = cpu_seconds(cluster.pid("primary"))
        start = time.monotonic()
        cluster.start("r1", replica_of=port, port=replica_port, prefix=wan.exec_prefix("b"),
                      host=wan.address("b"), primary_host=wan.address("a"))  # fmt: skip
        done = _converged(cluster, deadline_s)
        cpu = cpu_seconds(cluster.pid("primary")) - cpu0
        wire = wire_fields(wan, before, entries, values)
        with cluster.resp("primary") as r:
            partial = int(r.info("stats")["sync_partial_ok"]) > partial0
    seconds = done - start
    return {
        **_base(profile, values),
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds),
        "partial": partial,
        **wire,
        "primary_cpu_s": round(cpu, 2),
    }
