"""Node processes for benchmarks: temp data dirs, free loopback ports, ended by PID."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kevo_repl.client import Client, NodeUnreachableError

__all__ = ["BenchCluster", "free_port_pair", "machine", "rss_kib"]


def free_port_pair() -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def machine() -> str:
    cpus = os.cpu_count()
    return f"{cpus} cores, Linux {platform.release()}, CPython {platform.python_version()}"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class BenchCluster:
    root: Path
    procs: list[tuple[str, subprocess.Popen[bytes], int]] = field(default_factory=list)

    def start(self, role: str, name: str, *args: str) -> str:
        port = free_port_pair()
        argv = [
            sys.executable,
            "-m",
            "kevo_repl",
            "--log-format",
            "json",
            "--log-level",
            "warning",
            role,
            "--data",
            str(self.root / name),
            "--port",
            str(port),
            *args,
        ]
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append((name, proc, port))
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}"
                )
            try:
                with Client(address, timeout_ms=300) as c:
                    c.status()
                return address
            except NodeUnreachableError:
                if time.monotonic() > deadline:
                    raise

    def pid(self, name: str) -> int:
        return next(p.pid for n, p, _ in self.procs if n == name)

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def bench_cluster() -> Iterator[BenchCluster]:
    with tempfile.TemporaryDirectory(
        prefix="kevo-bench-", dir=os.environ.get("KEVO_BENCH_DIR")
    ) as d:
        cluster = BenchCluster(Path(d))
        try:
            yield cluster
        finally:
            cluster.stop()
