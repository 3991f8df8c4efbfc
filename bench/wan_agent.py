"""The parts of the WAN benchmark that run inside a side: load, paced writes, lag listeners.

Why a process in the side: the load must reach the primary locally, so that the link
carries only replication, and a lag listener must sit beside the node it times (one clock,
CLOCK_MONOTONIC, for every namespace: no time namespace is made). ``Agent`` starts one under
``Wan.exec_prefix`` and talks to it by lines: ``ready``, ``written N``, then one JSON object;
a line on its stdin tells a listener to stop. Every agent has a deadline (SIGALRM), and
SIGTERM unwinds it, so its load processes end with it.

    python -m bench.wan_agent kevo-load --node H:P --entries N [--values json] ...
    python -m bench.wan_agent redis-load --port P --entries N [--values json] ...
    python -m bench.wan_agent listen --kind kevo|redis --target H:P|PORT
    python -m bench.wan_agent paced --kind kevo|redis --target H:P|PORT --rate R --total N
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.lagprobe import listeners, paced
from bench.loadgen import VALUES, run_load, value_maker
from bench.paced_writer import send_paced
from bench.redis_server import encode_command
from bench.report import percentile
from kevo_repl.wire import pb

__all__ = ["Agent", "mean_value_bytes"]

_ROOT = Path(__file__).resolve().parent.parent


def mean_value_bytes(values: str, seed: int = 99, sample: int = 4000) -> float:
    """Mean size of a value of this kind (the raw bytes per entry are key + this)."""
    make = value_maker(values, random.Random(seed))
    return sum(len(make()) for _ in range(sample)) / sample


def _kevo_load(a: argparse.Namespace) -> dict[str, Any]:
    r = run_load(a.node, clients=a.clients, depth=a.depth, entries=a.entries, procs=a.procs,
                 key_space=a.key_space, seed=a.seed, values=a.values)  # fmt: skip
    return {
        "entries": r.entries,
        "errors": r.errors,
        "seconds": r.seconds,
        "last_lsn": r.last_lsn,
        "started": r.started,
        "latency_p50_ms": round(percentile(r.latency_ms, 0.5), 3),
        "latency_p99_ms": round(percentile(r.latency_ms, 0.99), 3),
    }


def _redis_load(a: argparse.Namespace) -> dict[str, Any]:
    """SETs through ``redis-cli --pipe`` (as fast as the primary takes them)."""
    rng = random.Random(a.seed)
    value = value_maker(a.values, rng)
    body = b"".join(
        encode_command(b"SET", b"key:%012d" % rng.randrange(a.key_space), value())
        for _ in range(a.entries)
    )
    started = time.monotonic()
    done = subprocess.run(["redis-cli", "-p", str(a.port), "--pipe"], input=body,
                          capture_output=True, timeout=a.deadline_s)  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0 or b"errors: 0" not in done.stdout:
        raise RuntimeError(f"redis-cli --pipe failed: {done.stdout[-300:]!r}")
    return {"entries": a.entries, "seconds": seconds, "started": started}


def _wait_stop() -> None:
    sys.stdin.readline()


def _listen(a: argparse.Namespace) -> dict[str, Any]:
    target = a.target if a.kind == "kevo" else int(a.target)
    with listeners(a.kind, [target]) as collect:
        print("ready", flush=True)
        _wait_stop()
        (seen,) = collect()
    return {"seen": seen}


def _redis_paced(port: int, rate: int, cmds: list[bytes]) -> tuple[float, int]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    got = 0

    def drain() -> None:
        nonlocal got
        try:
            while data := sock.recv(1 << 16):
                got += len(data)
        except BlockingIOError:
            pass

    with sock:
        seconds = paced(lambda n: sock.sendall(cmds[n]), drain, rate, len(cmds))
        deadline = time.monotonic() + 30
        while got < 5 * len(cmds) and time.monotonic() < deadline:  # "+OK\r\n" each
            select.select([sock], [], [], 0.1)
            drain()
    return seconds, len(cmds)


def _paced(a: argparse.Namespace) -> dict[str, Any]:
    """Single writes at ``rate``/s with a listener on the same (primary) node."""
    value = value_maker(a.values, random.Random(a.seed))
    keys = [b"lag:%09d" % n for n in range(a.total)]  # the Redis listener reads these keys
    with listeners(a.kind, [a.target if a.kind == "kevo" else int(a.target)]) as collect:
        if a.kind == "kevo":
            frames = [
                pb.Request(request_id=n + 1, put=pb.PutRequest(key=k, value=value()))
                .SerializeToString() for n, k in enumerate(keys)
            ]  # fmt: skip
            seconds, last = send_paced(a.target, frames, a.rate)
        else:
            cmds = [encode_command(b"SET", k, value()) for k in keys]
            seconds, last = _redis_paced(int(a.target), a.rate, cmds)
        print(f"written {last}", flush=True)
        _wait_stop()
        (seen,) = collect()
    return {"seconds": seconds, "last_lsn": last, "seen": seen}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.wan_agent", description=__doc__)
    p.add_argument("--deadline-s", type=float, default=600)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kevo-load")
    k.add_argument("--node", required=True)
    k.add_argument("--clients", type=int, default=50)
    k.add_argument("--depth", type=int, default=16)
    k.add_argument("--procs", type=int, default=2)
    r = sub.add_parser("redis-load")
    r.add_argument("--port", type=int, required=True)
    for q in (k, r):
        q.add_argument("--entries", type=int, required=True)
        q.add_argument("--key-space", type=int, default=100_000)
    lst = sub.add_parser("listen")
    pc = sub.add_parser("paced")
    for q in (lst, pc):
        q.add_argument("--kind", choices=["kevo", "redis"], required=True)
        q.add_argument("--target", required=True, help="kevo HOST:PORT or Redis port")
    pc.add_argument("--rate", type=int, required=True)
    pc.add_argument("--total", type=int, required=True)
    for q in (k, r, pc):
        q.add_argument("--values", choices=VALUES, default="json")
        q.add_argument("--seed", type=int, default=14)
    return p


def _raise(exc: type[BaseException]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise exc

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise(KeyboardInterrupt))
    signal.signal(signal.SIGALRM, _raise(TimeoutError))
    signal.alarm(max(1, int(a.deadline_s)))
    run = {"kevo-load": _kevo_load, "redis-load": _redis_load, "listen": _listen,
           "paced": _paced}[a.cmd]  # fmt: skip
    out = run(a)
    signal.alarm(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # done: ending now needs no unwinding
    print(json.dumps(out), flush=True)
    return 0


class Agent:
    """One agent process under ``prefix``; ended by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, prefix: Sequence[str], *args: str, deadline_s: float = 600) -> None:
        argv = [*prefix, sys.executable, "-m", "bench.wan_agent", "--deadline-s",
                str(deadline_s), *args]  # fmt: skip
        self.name = args[0] if args else "agent"
        self.deadline = time.monotonic() + deadline_s + 10
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=_ROOT, text=True)  # fmt: skip

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def line(self, timeout: float = 60) -> str:
        """The agent's next line (raises if it exits or says nothing in time)."""
        assert self.proc.stdout is not None
        until = min(self.deadline, time.monotonic() + timeout)
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0, until - time.monotonic()))
        text = self.proc.stdout.readline() if ready else ""
        if not text:
            raise RuntimeError(f"agent {self.name} gave no line (exit {self.proc.poll()})")
        return text.strip()

    def expect(self, word: str, timeout: float = 60) -> str:
        text = self.line(timeout)
        if not text.startswith(word):
            raise RuntimeError(f"agent said {text[:200]!r}, expected {word!r}")
        return text

    def result(self, timeout: float = 600) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.line(timeout))
        return out

    def stop(self) -> None:
        """Tell a listener (or a paced writer) to collect and answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)  # one that answered is exiting by itself
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


if __name__ == "__main__":
    sys.exit(main())
