"""The same workloads against Redis (primary + replicas), in the same run, on loopback.

``aof=True`` runs the primary with ``appendonly yes`` + ``appendfsync always`` (kevo's
``fsync=always``), ``aof=False`` without AOF. Replicas never persist. Throughput comes from
``redis-benchmark``; lag from keyspace notifications (bench/lagprobe.py); full sync from a
fresh replica process; partial resync from a replica stopped with ``SHUTDOWN SAVE`` and
restarted (it keeps its replication id and offset, so PSYNC continues from the backlog).
"""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import time
from typing import Any

from bench.harness import wait_until
from bench.lagprobe import lags_ms, listeners, paced
from bench.procinfo import RssSampler, cpu_seconds, mib, reaped_children_cpu, rss_kib
from bench.redis_server import (
    AOF_ALWAYS,
    NO_AOF,
    RedisCluster,
    Resp,
    encode_command,
    pipe_load,
    redis_cluster,
)
from bench.replication_bench import cpu_shares
from bench.report import lag_summary

__all__ = [
    "redis_fanout",
    "redis_full_sync",
    "redis_idle_memory",
    "redis_lag",
    "redis_partial_resync",
    "redis_throughput",
]

KEY16 = b"key:%012d"  # 16 B keys, as kevo's dataset


def _pair(cluster: RedisCluster, aof: bool, replicas: int = 1) -> tuple[int, list[str]]:
    port = cluster.start("primary", *(AOF_ALWAYS if aof else NO_AOF))
    names = [f"r{i + 1}" for i in range(replicas)]
    for n in names:
        cluster.start(n, replica_of=port)
    for n in names:
        wait_until(f"redis {n} synced", lambda n=n: cluster.synced(n), 60, 0.02)  # type: ignore[misc]
    # After a diskless sync, Redis 7 starts the command stream to a replica only once its
    # first REPLCONF ACK arrived (sent once a second), though INFO already says online; a
    # probe write that reached every replica proves the stream flows.
    wait_until("redis replicas online", lambda: cluster.online("primary") == replicas, 30, 0.02)
    with Resp(port) as r:
        r.call("SET", "probe", "1")
    for n in names:
        wait_until("redis stream", lambda n=n: cluster.caught_up(n, "primary"), 30, 0.01)  # type: ignore[misc]
    return port, names


def _system(aof: bool) -> str:
    return "redis-aof-always" if aof else "redis-no-aof"


def redis_throughput(aof: bool, clients: int, pipeline: int, requests: int) -> dict[str, Any]:
    """``redis-benchmark -t set -d 100 -r 100000 -c C -P D -n N`` against the primary."""
    with redis_cluster() as cluster:
        port, (replica,) = _pair(cluster, aof)
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set", "-d", "100"]
        argv += ["-r", "100000", "-c", str(clients), "-P", str(pipeline), "--csv"]
        warm = max(clients * pipeline * 4, requests // 20)
        subprocess.run([*argv, "-n", str(warm)], capture_output=True, timeout=300, check=True)
        wait_until("redis replica", lambda: cluster.caught_up(replica, "primary"), 60)
        pids = (cluster.pid("primary"), cluster.pid(replica))
        cpu0 = [cpu_seconds(p) for p in pids] + [reaped_children_cpu()]
        start = time.monotonic()
        done = subprocess.run(
            [*argv, "-n", str(requests)], capture_output=True, text=True, timeout=600, check=True
        )
        cpu = [cpu_seconds(p) for p in pids] + [reaped_children_cpu()]
        applied = wait_until(
            "redis replica applied", lambda: cluster.caught_up(replica, "primary"), 120, 0.002
        )
    row = next(r for r in csv.DictReader(io.StringIO(done.stdout)) if r["test"] == "SET")
    seconds = requests / float(row["rps"])
    return {
        "system": _system(aof),
        "clients": clients,
        "pipeline": pipeline,
        "entries": requests,
        "writes_per_s": round(float(row["rps"])),
        "replica_applied_per_s": round(requests / (applied - start)),
        "latency_p50_ms": float(row["p50_latency_ms"]),
        "latency_p99_ms": float(row["p99_latency_ms"]),
        **cpu_shares(cpu0, cpu, seconds),
    }


def _write_paced(port: int, rate: int, total: int) -> float:
    """Single SETs at ``rate``/s over one connection; waits for every +OK."""
    value = b"x" * 100
    cmds = [encode_command(b"SET", b"lag:%09d" % n, value) for n in range(total)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = 0
    try:

        def drain() -> None:
            nonlocal received
            sock.setblocking(False)
            try:
                while True:
                    data = sock.recv(1 << 16)
                    if not data:
                        raise ConnectionError("redis closed the connection")
                    received += len(data)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)

        seconds = paced(lambda n: sock.sendall(cmds[n]), drain, rate, total)
        sock.settimeout(30)
        while received < 5 * total:  # "+OK\r\n" each
            received += len(sock.recv(1 << 16))
    finally:
        sock.close()
    return seconds


def _measure(aof: bool, rate: int, seconds: float, replicas: int) -> dict[str, Any]:
    total = int(rate * seconds)
    with redis_cluster() as cluster:
        port, names = _pair(cluster, aof, replicas)
        ports = [port] + [cluster.procs[n][1] for n in names]
        with listeners("redis", ports) as collect:
            elapsed = _write_paced(port, rate, total)
            for n in names:
                wait_until("redis replicas", lambda n=n: cluster.caught_up(n, "primary"), 120)  # type: ignore[misc]
            seen = collect()
    return {
        "elapsed": elapsed,
        "written": len(seen[0]),
        "per_replica": [lags_ms(seen[0], s) for s in seen[1:]],
    }


def redis_lag(aof: bool, rate: int, seconds: float, cdf: bool = False) -> dict[str, Any]:
    m = _measure(aof, rate, seconds, 1)
    lags, missing = m["per_replica"][0]
    return {
        "system": _system(aof),
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "missing_on_replica_stream": missing,
        **lag_summary(lags, cdf=cdf),
    }


def redis_fanout(aof: bool, replicas: int, rate: int, seconds: float) -> dict[str, Any]:
    m = _measure(aof, rate, seconds, replicas)
    p99 = [lag_summary(lags)["lag_p99_ms"] for lags, _ in m["per_replica"]]
    return {
        "system": _system(aof),
        "replicas": replicas,
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / m["elapsed"]),
        "lag_p99_ms_per_replica": p99,
        "lag_p99_ms_max": max(p99),
        "missing_on_replica_streams": sum(missing for _, missing in m["per_replica"]),
    }


def redis_full_sync(aof: bool, keys: int) -> dict[str, Any]:
    """A fresh replica process of a primary holding ``keys`` keys: start to in sync."""
    with redis_cluster() as cluster:
        port = cluster.start("primary", *(AOF_ALWAYS if aof else NO_AOF))
        load_s = pipe_load(port, keys, KEY16)
        base = rss_kib(cluster.pid("primary"))
        with RssSampler({"primary": cluster.pid("primary")}) as rss:
            start = time.monotonic()
            cluster.start("replica", replica_of=port)
            rss.pids["replica"] = cluster.pid("replica")
            done = wait_until("redis full sync", lambda: cluster.synced("replica"), 600, 0.01)
        with Resp(cluster.procs["replica"][1]) as r:
            got = int(r.call("DBSIZE"))
    seconds = done - start
    return {
        "system": _system(aof),
        "keys": got,
        "load_seconds": round(load_s, 2),
        "seconds": round(seconds, 3),
        "mb_per_s": round(keys * 116 / 1e6 / seconds, 1),
        "primary_rss_mib": mib(base),
        "primary_rss_growth_mib": mib(rss.peak_kib["primary"] - base),
        "primary_fork_child_private_mib": mib(rss.peak_child_private_kib["primary"]),
        "replica_peak_rss_mib": mib(rss.peak_kib["replica"]),
    }


def redis_partial_resync(aof: bool, entries: int) -> dict[str, Any]:
    """Replica stopped (SHUTDOWN SAVE), ``entries`` SETs, restarted: entries/s to converge."""
    with redis_cluster() as cluster:
        port, (replica,) = _pair(cluster, aof)
        replica_port = cluster.procs[replica][1]
        cluster.shutdown_save(replica)
        pipe_load(port, entries, KEY16)
        with Resp(port) as r:
            partial_before = int(r.info("stats")["sync_partial_ok"])
        start = time.monotonic()
        cluster.start(replica, replica_of=port, port=replica_port)
        done = wait_until("redis resync", lambda: cluster.caught_up(replica, "primary"), 600)
        with Resp(port) as r:
            partial = int(r.info("stats")["sync_partial_ok"]) > partial_before
    seconds = done - start
    return {
        "system": _system(aof),
        "entries": entries,
        "partial": partial,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds),
    }


def redis_idle_memory() -> dict[str, Any]:
    with redis_cluster() as cluster:
        _pair(cluster, aof=True)
        time.sleep(2)
        return {
            "system": "redis",
            "primary_rss_mib": mib(rss_kib(cluster.pid("primary"))),
            "replica_rss_mib": mib(rss_kib(cluster.pid("r1"))),
        }
