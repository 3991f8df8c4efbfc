"""kevo-repl with a large dataset: bootstrap of a fresh replica, catch-up, idle memory.

Bootstrap: the primary holds ``keys`` keys (16 B keys, 100 B values, about 120 MB with
overhead) and a WAL cap small enough that the start of history is gone (otherwise a fresh
replica replays the WAL instead of bootstrapping); a fresh replica process is started and
the clock stops when its Status is READY at the primary's LSN. VmRSS of both is sampled
every 20 ms (bench/procinfo.py).

Catch-up: a replica is stopped, ``entries`` entries are written, the replica is restarted
with its data; the clock stops when it is READY at the primary's LSN. The primary's Status
must count one catch-up and no bootstrap.
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import BenchCluster, bench_cluster, replica_caught_up, wait_until
from bench.procinfo import RssSampler, mib, rss_kib, status_kib
from kevo_repl.client import Client, batch_request
from kevo_repl.wire import pb

__all__ = ["load_keys", "run_bootstrap", "run_catchup", "run_idle_memory"]

ENTRY_BYTES = 16 + 100


def load_keys(primary: str, count: int, start: int = 0, batch: int = 1000) -> tuple[int, float]:
    """Write keys ``key:%012d`` for ``start..start+count`` in batches; (last LSN, seconds)."""
    value = b"v" * 100
    t0 = time.perf_counter()
    last = 0
    with Client(primary, timeout_ms=60_000) as c:
        for lo in range(start, start + count, batch * 64):
            hi = min(start + count, lo + batch * 64)
            reqs = [
                batch_request((b"key:%012d" % i, value) for i in range(b, min(hi, b + batch)))
                for b in range(lo, hi, batch)
            ]
            for resp in c.call_many(reqs, window=4):
                if resp.WhichOneof("body") != "write":
                    raise RuntimeError(f"load failed: {resp}")
                last = max(last, resp.write.lsn)
    return last, time.perf_counter() - t0


def _replica_info(primary: str, replica_id: str) -> pb.ReplicaInfo:
    with Client(primary, timeout_ms=10_000) as c:
        return next(r for r in c.status_message().replicas if r.replica_id == replica_id)


def _retained_from(primary: str) -> int:
    with Client(primary, timeout_ms=10_000) as c:
        return int(c.status_message().retained_from_lsn)


def run_bootstrap(keys: int = 1_000_000) -> dict[str, Any]:
    """A snapshot bootstrap: a WAL cap (32 MiB at 1M keys) dropped the start of history."""
    with bench_cluster() as cluster:
        cap = str(max(1 << 20, min(32 << 20, keys * 130 // 4)))
        primary = cluster.start("primary", "primary", "--fsync", "always", "--retention-bytes", cap)
        last, load_s = load_keys(primary, keys)
        wait_until("WAL retention", lambda: _retained_from(primary) > 1, 30, 0.1)
        time.sleep(1.5)  # a checkpoint passes; the primary is idle again
        base = rss_kib(cluster.pid("primary"))
        base_anon = status_kib(cluster.pid("primary"), "RssAnon")
        with RssSampler({"primary": cluster.pid("primary")}) as rss:
            start = time.monotonic()
            replica = cluster.spawn("replica", "r1", "--primary", primary, "--id", "r1")
            rss.pids["replica"] = cluster.pid("r1")
            cluster.wait_serving("r1")
            with Client(replica, timeout_ms=10_000) as rc:
                done = wait_until("bootstrap", replica_caught_up(rc, last, cluster), 600, 0.01)
        info = _replica_info(primary, "r1")
        replica_hwm = status_kib(cluster.pid("r1"), "VmHWM")
    seconds = done - start
    return {
        "system": "kevo",
        "keys": keys,
        "load_seconds": round(load_s, 2),
        "seconds": round(seconds, 3),
        "mb_per_s": round(keys * ENTRY_BYTES / 1e6 / seconds, 1),
        "primary_rss_mib": mib(base),
        "primary_rss_growth_mib": mib(rss.peak_kib["primary"] - base),
        "primary_anon_growth_mib": mib(rss.peak_anon_kib["primary"] - base_anon),
        "replica_peak_rss_mib": mib(max(rss.peak_kib["replica"], replica_hwm)),
        "replica_peak_anon_mib": mib(rss.peak_anon_kib["replica"]),
        "bootstraps": int(info.bootstraps),
    }


def run_catchup(entries: int = 1_000_000) -> dict[str, Any]:
    with bench_cluster() as cluster:
        primary = cluster.start("primary", "primary", "--fsync", "always")
        replica = cluster.start("replica", "r1", "--primary", primary, "--id", "r1")
        with Client(replica, timeout_ms=10_000) as rc:
            wait_until("replica ready", replica_caught_up(rc, 0, cluster), 60, 0.05)
        port = cluster.port("r1")
        cluster.stop_node("r1")
        last, _ = load_keys(primary, entries)
        before = _replica_info(primary, "r1")
        start = time.monotonic()
        cluster.start("replica", "r1", "--primary", primary, "--id", "r1", port=port)
        with Client(replica, timeout_ms=10_000) as rc:
            done = wait_until("catch-up", replica_caught_up(rc, last, cluster), 600, 0.01)
        after = _replica_info(primary, "r1")
    seconds = done - start
    return {
        "system": "kevo",
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds),
        "catchups": int(after.catchups - before.catchups),
        "bootstraps": int(after.bootstraps - before.bootstraps),
    }


def _idle(cluster: BenchCluster) -> dict[str, Any]:
    primary = cluster.start("primary", "primary", "--fsync", "always")
    replica = cluster.start("replica", "r1", "--primary", primary, "--id", "r1")
    with Client(replica, timeout_ms=10_000) as rc:
        wait_until("replica ready", replica_caught_up(rc, 0, cluster), 60, 0.05)
    time.sleep(2)
    return {
        "system": "kevo",
        "primary_rss_mib": mib(rss_kib(cluster.pid("primary"))),
        "replica_rss_mib": mib(rss_kib(cluster.pid("r1"))),
        "primary_anon_mib": mib(status_kib(cluster.pid("primary"), "RssAnon")),
        "replica_anon_mib": mib(status_kib(cluster.pid("r1"), "RssAnon")),
    }


def run_idle_memory() -> dict[str, Any]:
    """VmRSS of a fresh, idle primary and of its idle replica (2 s after joining)."""
    with bench_cluster() as cluster:
        return _idle(cluster)
