"""End-to-end replication: throughput and commit-to-replica-applied lag.

    python -m bench.replication_bench throughput --batch 16 --requests 20000 [--json]
    python -m bench.replication_bench lag --rate 5000 --seconds 10 [--json]

Throughput: one primary (fsync=always) and one replica; one client process pipelines batch
writes (``--window`` in flight); entries/s committed on the primary and entries/s applied on
the replica (until the replica's digest LSN reaches the last one).

Lag: an open-loop writer sends single puts at a fixed rate; the benchmark subscribes to the
primary's PUB (records leave it once committed) and the replica's PUB (records leave it once
applied) and measures, per LSN, the time between the two on one clock. Both sides cross one
PUB->SUB hop, so the hop cancels out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import zmq

from bench.harness import bench_cluster, machine
from kevo_repl.client import Client, batch_request
from kevo_repl.core.record import peek_lsns
from kevo_repl.wire import pb

__all__ = ["run_lag", "run_throughput"]


def _batches(batch: int, requests: int, value_bytes: int) -> list[pb.Request]:
    import random

    rng = random.Random(7)
    value = b"v" * value_bytes
    return [
        batch_request([(b"key:%012d" % rng.randrange(100_000), value) for _ in range(batch)])
        for _ in range(requests)
    ]


def run_throughput(
    batch: int, requests: int, window: int, value_bytes: int = 100
) -> dict[str, Any]:
    reqs = _batches(batch, requests, value_bytes)
    with bench_cluster() as cluster:
        primary = cluster.start("primary", "primary", "--fsync", "always")
        replica = cluster.start("replica", "replica", "--primary", primary, "--id", "r1")
        with Client(primary, timeout_ms=30_000) as c:
            c.call_many(reqs[: max(1, requests // 20)], window=window)  # warm-up
            start = time.perf_counter()
            responses = c.call_many(reqs, window=window)
            committed_s = time.perf_counter() - start
        last = max(r.write.lsn for r in responses)
        with Client(replica, timeout_ms=30_000) as rc:
            while rc.digest().lsn < last:
                time.sleep(0.001)
        replicated_s = time.perf_counter() - start
    entries = batch * requests
    return {
        "batch": batch,
        "requests": requests,
        "window": window,
        "entries": entries,
        "writes_per_s": round(entries / committed_s),
        "replica_applied_per_s": round(entries / replicated_s),
        "machine": machine(),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _listen(address: str, ready: Any, stop: Any, out: Any) -> None:
    """A listener process: timestamps (CLOCK_MONOTONIC, shared by all processes) per LSN."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{address}")
    seen: dict[int, int] = {}
    joined = False
    while not stop.is_set():
        if not sock.poll(50, zmq.POLLIN):
            continue
        frame = sock.recv()
        now = time.monotonic_ns()
        if not joined:
            joined = True
            ready.set()  # beacons arrive every 200 ms: a beacon proves the subscription is live
        if frame[:1] == b"W":
            first, last = peek_lsns(frame[1:])
            for lsn in range(first, last + 1):
                seen[lsn] = now
    out.put(seen)
    sock.close(0)
    ctx.term()


def run_lag(rate: int, seconds: float) -> dict[str, Any]:
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    with bench_cluster() as cluster:
        primary = cluster.start("primary", "primary", "--fsync", "always")
        replica = cluster.start("replica", "replica", "--primary", primary, "--id", "r1")
        stop = spawn.Event()
        listeners = []
        for address in (primary, replica):
            ready, out = spawn.Event(), spawn.Queue()
            proc = spawn.Process(target=_listen, args=(address, ready, stop, out), daemon=True)
            proc.start()
            listeners.append((proc, ready, out))
        for _, ready, _ in listeners:
            if not ready.wait(30):
                raise RuntimeError("listener did not join the stream")
        total = int(rate * seconds)
        with Client(primary, timeout_ms=10_000) as c:
            sock = c._sock  # one DEALER, open loop: sends on schedule, replies drained apart
            start = time.perf_counter()
            for n in range(total):
                due = start + n / rate
                while (delay := due - time.perf_counter()) > 0:
                    if sock.poll(max(0, int(delay * 1000)), zmq.POLLIN):
                        while sock.poll(0, zmq.POLLIN):
                            sock.recv()
                req = pb.Request(
                    request_id=n + 1, put=pb.PutRequest(key=b"lag:%09d" % n, value=b"x" * 100)
                )
                sock.send(req.SerializeToString())
            last = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and last < total:
                if sock.poll(100, zmq.POLLIN):
                    last = max(last, pb.Response.FromString(sock.recv()).write.lsn)
        with Client(replica, timeout_ms=10_000) as rc:
            deadline = time.monotonic() + 10
            while rc.digest().lsn < last and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(0.3)  # the listeners drain what is in flight
        stop.set()
        seen = [out.get(timeout=30) for _, _, out in listeners]
        for proc, _, _ in listeners:
            proc.join(10)
    lags = sorted((seen[1][lsn] - seen[0][lsn]) / 1e6 for lsn in seen[0] if lsn in seen[1])
    return {
        "rate": rate,
        "seconds": seconds,
        "samples": len(lags),
        "missing_on_replica_stream": len(seen[0]) - len(lags),
        "lag_p50_ms": round(_percentile(lags, 0.5), 3),
        "lag_p99_ms": round(_percentile(lags, 0.99), 3),
        "lag_p999_ms": round(_percentile(lags, 0.999), 3),
        "lag_mean_ms": round(statistics.fmean(lags), 3) if lags else None,
        "machine": machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--requests", type=int, default=20_000)
    t.add_argument("--window", type=int, default=64)
    t.add_argument("--json", action="store_true")
    lg = sub.add_parser("lag")
    lg.add_argument("--rate", type=int, default=5000)
    lg.add_argument("--seconds", type=float, default=10)
    lg.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.what == "throughput":
        result = run_throughput(args.batch, args.requests, args.window)
    else:
        result = run_lag(args.rate, args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
