"""The open-loop writer of the lag and fan-out benchmarks: single 100 B puts at a fixed rate.

``mark("start")`` and ``mark("end")`` bracket the paced sends, so the caller reads CPU and byte
counters over exactly the writing window. ``write_paced_in`` runs the same writer in a fresh
process inside a network namespace (beside the primary: its requests and replies then never
cross the primary's link, which carries only what followers get).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import zmq

from bench.lagprobe import paced
from bench.netio import join_netns
from kevo_repl.client import Client
from kevo_repl.wire import pb

__all__ = ["send_paced", "write_paced", "write_paced_in"]


def _nothing(_: str) -> None:
    return None


def write_paced(
    primary: str, rate: int, total: int, mark: Callable[[str], None] = _nothing
) -> tuple[float, int]:
    """``total`` single puts at ``rate``/s over one DEALER; returns (seconds, last LSN acked)."""
    value = b"x" * 100
    frames = [
        pb.Request(
            request_id=n + 1, put=pb.PutRequest(key=b"lag:%09d" % n, value=value)
        ).SerializeToString()
        for n in range(total)
    ]
    return send_paced(primary, frames, rate, mark)


def send_paced(
    primary: str, frames: list[bytes], rate: int, mark: Callable[[str], None] = _nothing
) -> tuple[float, int]:
    """Send request ``frames`` (writes) at ``rate``/s, draining the answers apart; returns
    (seconds, last LSN acked, waiting up to 30 s after the last send)."""
    total = len(frames)
    last = 0
    deadline = time.monotonic() + 2 * total / rate + 60  # a stalled primary fails the run
    with Client(primary, timeout_ms=10_000) as c:
        sock = c._sock  # open loop: sends on schedule, replies drained apart

        def send(n: int) -> None:
            while True:
                try:
                    sock.send(frames[n], zmq.NOBLOCK)
                    return
                except zmq.Again:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"write {n} of {total}: the primary took none") from None
                    sock.poll(100, zmq.POLLOUT)

        def drain() -> None:
            nonlocal last
            while True:
                try:
                    resp = pb.Response.FromString(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    return
                last = max(last, resp.write.lsn)

        mark("start")
        seconds = paced(send, drain, rate, total)
        mark("end")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and last < total:
            if sock.poll(100, zmq.POLLIN):
                drain()
    return seconds, last


def _writer(netns: str, primary: str, rate: int, total: int, ev: dict[str, Any], out: Any) -> None:
    join_netns(netns)  # before any socket: zmq's I/O thread is created in this namespace

    def mark(name: str) -> None:  # tell the parent, and wait until it has read its counters
        ev[name].set()
        if not ev[f"{name}_read"].wait(120):
            raise RuntimeError(f"the parent never read its counters at {name}")

    out.put(write_paced(primary, rate, total, mark))


def _wait(event: Any, proc: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not event.wait(0.2):
        if not proc.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"paced writer: {what} not reached (exit {proc.exitcode})")


def write_paced_in(
    netns: str, primary: str, rate: int, total: int, mark: Callable[[str], None] = _nothing
) -> tuple[float, int]:
    """``write_paced`` from a process in namespace ``netns``; ``mark`` runs here, in step."""
    spawn = mp.get_context("spawn")
    ev = {k: spawn.Event() for k in ("start", "start_read", "end", "end_read")}
    out = spawn.Queue()
    proc = spawn.Process(target=_writer, args=(netns, primary, rate, total, ev, out), daemon=True)
    proc.start()
    try:
        _wait(ev["start"], proc, 120, "start")  # interpreter, frames, connection
        mark("start")
        ev["start_read"].set()
        _wait(ev["end"], proc, total / rate * 3 + 60, "end")
        mark("end")
        ev["end_read"].set()
        result: tuple[float, int] = out.get(timeout=60)
        return result
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
