"""Node processes for benchmarks: temp data dirs, free loopback ports, ended by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.procinfo import machine, rss_kib
from kevo_repl.client import Client, NodeUnreachableError
from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb

LOOPBACK = "127.0.0.1"

__all__ = [
    "BenchCluster",
    "bench_cluster",
    "end_process",
    "machine",
    "replica_caught_up",
    "rss_kib",
    "wait_until",
]


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.005) -> float:
    """Poll ``check`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(every)


def end_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL after ``grace`` seconds; always reaps."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class _Node:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    stopped: bool = False
    host: str = LOOPBACK


@dataclass
class BenchCluster:
    root: Path
    nodes: list[_Node] = field(default_factory=list)

    def spawn(
        self,
        role: str,
        name: str,
        *args: str,
        port: int = 0,
        prefix: Sequence[str] = (),
        host: str = LOOPBACK,
    ) -> str:
        """Start a node process without waiting; returns its ``HOST:PORT``. ``prefix`` runs
        it elsewhere (``ip netns exec NS``), where it binds and advertises ``host``."""
        port = port or self._fresh_port_pair()
        where = [] if host == LOOPBACK else ["--bind", host, "--advertise", f"{host}:{port}"]
        argv = [
            *prefix,
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
            *where,
            *args,
        ]
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.nodes.append(_Node(name, proc, port, host=host))
        return f"{host}:{port}"

    def _fresh_port_pair(self) -> int:
        """A free pair not given to another node of this cluster: nodes spawned together bind
        late, so the kernel may offer a port (or its neighbour) twice before either binds."""
        taken = {n.port + d for n in self.nodes for d in (-1, 0, 1)}
        for _ in range(100):
            port = free_port_pair()
            if port not in taken:
                return port
        raise RuntimeError("no loopback port pair apart from this cluster's")

    def wait_serving(self, name: str, timeout: float = 30) -> None:
        """Until the node answers Status (it has bound its sockets)."""
        node = self._node(name)
        deadline = time.monotonic() + timeout
        while True:
            if node.proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited: {tail}")
            try:
                with Client(f"{node.host}:{node.port}", timeout_ms=300) as c:
                    c.status_message()
                return
            except NodeUnreachableError:
                if time.monotonic() > deadline:
                    raise

    def start(self, role: str, name: str, *args: str, port: int = 0) -> str:
        address = self.spawn(role, name, *args, port=port)
        self.wait_serving(name)
        return address

    def start_all(
        self,
        role: str,
        specs: list[tuple[str, list[str]]],
        timeout: float = 30,
        tries: int = 3,
        prefix: Sequence[str] = (),
        host: str = LOOPBACK,
    ) -> list[str]:
        """Spawn every (name, args) at once, then wait until each serves; returns addresses.

        Ports are free when picked, not reserved: with dozens of nodes starting and connecting
        at once, another socket can take one first. Such a node starts again on a new port.
        """
        addresses = {n: self.spawn(role, n, *args, prefix=prefix, host=host) for n, args in specs}
        for n, args in specs:
            for attempt in range(tries):
                try:
                    self.wait_serving(n, timeout)
                    break
                except RuntimeError as e:
                    if "Address already in use" not in str(e) or attempt == tries - 1:
                        raise
                    self._node(n).stopped = True  # exited; check_alive must not count it
                    addresses[n] = self.spawn(role, n, *args, prefix=prefix, host=host)
        return [addresses[n] for n, _ in specs]

    def pid(self, name: str) -> int:
        return self._node(name).proc.pid

    def port(self, name: str) -> int:
        return self._node(name).port

    def stop_node(self, name: str) -> None:
        node = self._node(name)
        node.stopped = True
        end_process(node.proc)

    def check_alive(self) -> None:
        """Raise if a node exited that the benchmark did not stop (fail fast, not time out)."""
        for node in self.nodes:
            if not node.stopped and node.proc.poll() is not None:
                tail = (self.root / f"{node.name}.log").read_text()[-1500:]
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}: {tail}")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            end_process(node.proc)

    def _node(self, name: str) -> _Node:
        return next(n for n in reversed(self.nodes) if n.name == name)


def replica_caught_up(
    client: Client, lsn: int, cluster: BenchCluster | None = None
) -> Callable[[], bool]:
    """A check: the replica behind ``client`` is READY and has applied ``lsn``."""

    def check() -> bool:
        if cluster is not None:
            cluster.check_alive()
        try:
            s = client.status_message()
        except NodeUnreachableError:
            return False
        return s.status == pb.STATUS_READY and s.lsn >= lsn

    return check


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
