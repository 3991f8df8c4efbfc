"""Closed-loop write load from several client processes, each one multiplexed DEALER.

Each process runs ``clients`` logical clients over ONE DEALER (request ids tell replies
apart; DESIGN.md section 9: 35-45% cheaper than a socket per client). A logical client keeps
``depth`` writes outstanding: in ``batch`` mode one ``BatchRequest`` of ``depth`` entries (the
wire shape of ``redis-benchmark -P depth``: depth commands per round trip), in ``inflight``
mode ``depth`` single ``PutRequest``s. Requests are serialized before the clock starts; the
request id is prepended as field 1 (protobuf accepts fields in any order).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from kevo_repl.adapters.zmq_io import SocketOptions, connect_socket
from kevo_repl.client import batch_request, parse_node
from kevo_repl.wire import pb

__all__ = ["LoadResult", "run_load"]

MODES = ("batch", "inflight")
VALUES = ("fixed", "json", "random")


def value_maker(kind: str, rng: random.Random) -> Callable[[], bytes]:
    """Values of ``kind`` drawn from ``rng`` (fixed seed: the same values every run)."""
    if kind == "fixed":
        return lambda: b"v" * 100
    from bench.compress_bench import json_like_value

    if kind == "json":
        return lambda: json_like_value(rng)
    if kind == "random":
        return lambda: rng.randbytes(len(json_like_value(rng)))
    raise ValueError(f"values must be one of {VALUES}")


@dataclass(frozen=True)
class LoadResult:
    entries: int
    requests: int
    errors: int
    seconds: float
    last_lsn: int
    latency_ms: list[float]  # sorted, per request
    started: float  # time.monotonic() of the first send


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bodies(
    mode: str, depth: int, entries: int, seed: int, key_space: int, values: str = "fixed"
) -> list[bytes]:
    rng = random.Random(seed)
    value = value_maker(values, rng)
    bodies: list[bytes] = []
    if mode == "batch" and depth > 1:
        for _ in range(entries // depth):
            keys = [b"key:%012d" % rng.randrange(key_space) for _ in range(depth)]
            bodies.append(batch_request((k, value()) for k in keys).SerializeToString())
    else:
        for _ in range(entries):
            key = b"key:%012d" % rng.randrange(key_space)
            put = pb.PutRequest(key=key, value=value())
            bodies.append(pb.Request(put=put).SerializeToString())
    return bodies


def _worker(
    address: str,
    clients: int,
    depth: int,
    mode: str,
    entries: int,
    seed: int,
    key_space: int,
    values: str,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    bodies = _bodies(mode, depth, entries, seed, key_space, values)
    per_request = depth if mode == "batch" and depth > 1 else 1
    window = clients * (1 if per_request > 1 else depth)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    host, port = parse_node(address)
    sock = connect_socket(ctx, zmq.DEALER, host, port + 1, SocketOptions(sndhwm=0, rcvhwm=0))
    status = pb.Request(request_id=0, status=pb.StatusRequest()).SerializeToString()
    sock.send(status)
    if not sock.poll(30_000, zmq.POLLIN):
        raise RuntimeError(f"{address} did not answer")
    sock.recv()
    ready.set()
    go.wait()
    sent_at: dict[int, float] = {}
    latency = array("d")
    errors = last_lsn = done = sent = 0
    now = time.perf_counter
    started = time.monotonic()
    t0 = now()
    total = len(bodies)
    while done < total:
        while sent < total and sent - done < window:
            sent += 1
            sock.send(b"\x08" + _varint(sent) + b"\x18\x01" + bodies[sent - 1])  # coalesce
            sent_at[sent] = now()
        if not sock.poll(30_000, zmq.POLLIN):
            raise RuntimeError(f"{address}: no reply within 30 s")
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            resp = pb.Response.FromString(frame)
            t = now()
            body = resp.WhichOneof("body")
            if body == "writes":  # one frame for several of our writes in one group
                for rid in resp.writes.request_ids:
                    latency.append((t - sent_at.pop(rid)) * 1000)
                done += len(resp.writes.request_ids)
                last_lsn = max(last_lsn, resp.writes.lsns[-1])
                continue
            latency.append((t - sent_at.pop(resp.request_id)) * 1000)
            done += 1
            if body == "write":
                last_lsn = max(last_lsn, resp.write.lsn)
            else:
                errors += 1
    seconds = now() - t0
    sock.close(0)
    ctx.term()
    out.put((total * per_request, total, errors, seconds, last_lsn, latency.tobytes(), started))


def run_load(
    address: str,
    *,
    clients: int,
    depth: int,
    entries: int,
    mode: str = "batch",
    procs: int = 2,
    key_space: int = 100_000,
    seed: int = 7,
    values: str = "fixed",
) -> LoadResult:
    """Write ``entries`` entries with ``clients`` logical clients over ``procs`` processes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    procs = max(1, min(procs, clients))
    spawn = mp.get_context("spawn")
    go, out = spawn.Event(), spawn.Queue()
    workers: list[Any] = []
    try:
        for i in range(procs):
            share = clients // procs + (1 if i < clients % procs else 0)
            ready = spawn.Event()
            args = (address, share, depth, mode, entries // procs, seed + i, key_space, values)
            proc = spawn.Process(target=_worker, args=(*args, ready, go, out), daemon=True)
            proc.start()
            workers.append((proc, ready))
        deadline = time.monotonic() + 120
        for proc, ready in workers:
            while not ready.wait(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("a load process did not start (see its stderr)")
        go.set()
        parts = [out.get(timeout=600) for _ in workers]
    finally:
        for proc, _ in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    start = min(p[6] for p in parts)
    end = max(p[6] + p[3] for p in parts)
    latency: array[float] = array("d")
    for p in parts:
        latency.frombytes(p[5])
    return LoadResult(
        entries=sum(p[0] for p in parts),
        requests=sum(p[1] for p in parts),
        errors=sum(p[2] for p in parts),
        seconds=end - start,
        last_lsn=max(p[4] for p in parts),
        latency_ms=sorted(latency),
        started=start,
    )
