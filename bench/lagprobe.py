"""Commit-to-applied lag probes: listener processes and open-loop writers, kevo and Redis.

A listener (a process per node, or for kevo one process holding several nodes' SUB sockets)
timestamps (CLOCK_MONOTONIC, one clock for every process) each write as the node announces
it: a kevo node's PUB frame (the primary publishes after commit, a replica after apply, on
the PUB its own followers subscribe to), a Redis node's ``__keyevent@0__:set`` notification
(Redis writes both the notification and the replication stream after the AOF fsync of the
same event-loop turn).
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import zmq

__all__ = ["lags_ms", "listener_groups", "listeners", "paced"]

_LSNS = struct.Struct("<QQ")
_KEY = re.compile(rb"\$13\r\nlag:(\d{9})\r\n")


def _kevo_listen(addresses: list[str], ready: Any, stop: Any, out: Any, netns: str = "") -> None:
    """One SUB socket per node; several nodes per process keep the probe's CPU bounded.
    ``netns``: listen from that namespace, beside the nodes (their streams stay off links)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    if netns:
        from bench.netio import join_netns

        join_netns(netns)  # before the context: its I/O thread must start in there
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    poller = zmq.Poller()
    index: dict[Any, int] = {}
    for i, address in enumerate(addresses):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(f"tcp://{address}")
        poller.register(sock, zmq.POLLIN)
        index[sock] = i
    got: list[list[tuple[int, bytes]]] = [[] for _ in addresses]
    live: set[int] = set()
    clock = time.monotonic_ns
    while not stop.is_set():
        for sock, _ in poller.poll(50):
            mine = got[index[sock]]
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frame[:1] == b"W":
                    mine.append((clock(), frame[17:33]))
                elif len(live) < len(addresses):
                    live.add(index[sock])  # a beacon proves the subscription is live
                    if len(live) == len(addresses):
                        ready.set()
    results: list[dict[int, int]] = []
    for frames in got:
        seen: dict[int, int] = {}
        for t, lsns in frames:
            first, last = _LSNS.unpack(lsns)
            for lsn in range(first, last + 1):
                seen.setdefault(lsn, t)
        results.append(seen)
    out.put(results)
    for sock in index:
        sock.close(0)
    ctx.term()


def _redis_listen(ports: list[int], ready: Any, stop: Any, out: Any) -> None:
    (port,) = ports  # one node per process
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
    out.put([seen])


def listener_groups(n: int, procs: int, sides: Sequence[str] = ()) -> list[list[int]]:
    """Target indices per process: the first (the primary, the reference) alone, the rest
    round-robin over the other processes; one each when ``procs`` is 0 or >= ``n``. With
    ``sides`` (a namespace per target) a process holds targets of one side only, as many
    per process as without sides (so a few more processes)."""
    if procs <= 0 or procs >= n:
        return [[i] for i in range(n)]
    rest = max(1, procs - 1)
    if len(set(sides[1:])) <= 1:
        return [[0], *(list(range(1 + k, n, rest)) for k in range(rest))]
    per = -(-(n - 1) // rest)
    groups = [[0]]
    for side in dict.fromkeys(sides[1:]):
        members = [i for i in range(1, n) if sides[i] == side]
        count = -(-len(members) // per)
        groups += [members[k::count] for k in range(count)]
    return groups


@contextmanager
def listeners(
    kind: str, targets: list[Any], procs: int = 0, sides: Sequence[str] = ()
) -> Iterator[Callable[[], list[dict[int, int]]]]:
    """Listeners on ``targets`` (kevo ``HOST:PORT`` or Redis port); yields ``collect``, which
    returns one ``{lsn: ns}`` per target, in order. One process per target, or for kevo
    ``procs`` processes (the first target alone in one, the others shared by the rest).
    ``sides``: for kevo, the namespace each target's listener joins ("" stays here)."""
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    target = _kevo_listen if kind == "kevo" else _redis_listen
    groups = listener_groups(len(targets), procs if kind == "kevo" else 0, sides)
    running: list[tuple[Any, Any, Any]] = []

    def collect() -> list[dict[int, int]]:
        time.sleep(0.3)  # what is in flight arrives
        stop.set()
        by_target: dict[int, dict[int, int]] = {}
        for group, (_, _, out) in zip(groups, running, strict=True):
            by_target.update(zip(group, out.get(timeout=60), strict=True))
        return [by_target[i] for i in range(len(targets))]

    try:
        for group in groups:
            ready, out = spawn.Event(), spawn.Queue()
            args: tuple[Any, ...] = ([targets[i] for i in group], ready, stop, out)
            if sides and sides[group[0]]:
                args += (sides[group[0]],)
            proc = spawn.Process(target=target, args=args, daemon=True)
            proc.start()
            running.append((proc, ready, out))
        for _, ready, _ in running:
            if not ready.wait(60):
                raise RuntimeError(f"a {kind} listener did not join the stream")
        yield collect
    finally:
        stop.set()
        for proc, _, _ in running:
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
