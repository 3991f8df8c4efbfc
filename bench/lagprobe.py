"""Commit-to-applied lag probes: listener processes and open-loop writers, kevo and Redis.

A listener process per node timestamps (CLOCK_MONOTONIC, one clock for every process) each
write as the node announces it: a kevo node's PUB frame (the primary publishes after commit,
a replica after apply), a Redis node's ``__keyevent@0__:set`` notification (Redis writes both
the notification and the replication stream after the AOF fsync of the same event-loop turn).
Lag = replica time - primary time; both sides cross one hop, so the hop cancels. Listeners do
the least work per message (store the time and the raw bytes) and parse after the run.
"""

from __future__ import annotations

import bisect
import multiprocessing as mp
import re
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zmq

__all__ = ["lags_ms", "listeners", "paced"]

_LSNS = struct.Struct("<QQ")
_KEY = re.compile(rb"\$13\r\nlag:(\d{9})\r\n")


def _kevo_listen(address: str, ready: Any, stop: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{address}")
    got: list[tuple[int, bytes]] = []
    clock = time.monotonic_ns
    while not stop.is_set():
        if not sock.poll(50, zmq.POLLIN):
            continue
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == b"W":
                got.append((clock(), frame[17:33]))
            elif not ready.is_set():
                ready.set()  # a beacon proves the subscription is live
    seen: dict[int, int] = {}
    for t, lsns in got:
        first, last = _LSNS.unpack(lsns)
        for lsn in range(first, last + 1):
            seen.setdefault(lsn, t)
    out.put(seen)
    sock.close(0)
    ctx.term()


def _redis_listen(port: int, ready: Any, stop: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    sock = socket.create_connection(("127.0.0.1", port))
    channel = b"__keyevent@0__:set"
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
    reply = b""
    while b":1\r\n" not in reply:
        reply += sock.recv(4096)
    ready.set()
    sock.settimeout(0.05)
    chunks: list[bytes] = []
    times: list[int] = []
    clock = time.monotonic_ns
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        times.append(clock())
        chunks.append(data)
    sock.close()
    ends: list[int] = []
    total = 0
    for c in chunks:
        total += len(c)
        ends.append(total)
    seen: dict[int, int] = {}
    for m in _KEY.finditer(b"".join(chunks)):
        # a message is there once its last byte arrived: the chunk holding its end
        seen.setdefault(int(m.group(1)), times[bisect.bisect_left(ends, m.end())])
    out.put(seen)


@contextmanager
def listeners(kind: str, targets: list[Any]) -> Iterator[Callable[[], list[dict[int, int]]]]:
    """Start one listener per target (kevo ``HOST:PORT`` or Redis port); yields ``collect``."""
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    target = _kevo_listen if kind == "kevo" else _redis_listen
    procs: list[tuple[Any, Any, Any]] = []
    results: list[dict[int, int]] = []

    def collect() -> list[dict[int, int]]:
        time.sleep(0.3)  # what is in flight arrives
        stop.set()
        results.extend(out.get(timeout=60) for _, _, out in procs)
        return results

    try:
        for t in targets:
            ready, out = spawn.Event(), spawn.Queue()
            proc = spawn.Process(target=target, args=(t, ready, stop, out), daemon=True)
            proc.start()
            procs.append((proc, ready, out))
        for _, ready, _ in procs:
            if not ready.wait(60):
                raise RuntimeError(f"a {kind} listener did not join the stream")
        yield collect
    finally:
        stop.set()
        for proc, _, _ in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def paced(send: Callable[[int], None], drain: Callable[[], None], rate: int, total: int) -> float:
    """Open loop: write ``n`` is sent at ``n / rate`` s whatever the replies do; returns s."""
    clock = time.perf_counter
    start = clock()
    n = 0
    while n < total:
        due = min(total, int((clock() - start) * rate) + 1)
        while n < due:
            send(n)
            n += 1
        drain()
        delay = start + n / rate - clock()
        if delay > 0:
            time.sleep(min(delay, 0.001))
    return clock() - start


def lags_ms(primary: dict[int, int], replica: dict[int, int]) -> tuple[list[float], int]:
    """Sorted lags in ms for writes both saw, and how many the replica never showed."""
    lags = sorted((replica[k] - t) / 1e6 for k, t in primary.items() if k in replica)
    return lags, len(primary) - len(lags)
