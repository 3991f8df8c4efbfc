"""A local cluster: one primary and N replicas as child processes, their logs merged.

Each child writes its JSON log lines straight to ``DIR/logs/<node>.log`` (so they survive the
cluster process, and ``kevo-repl logs --data DIR`` can follow them); the cluster shows its own
nodes' files merged, one ``[node]`` prefix per line. The primary listens on P, replica i on
P + 10 * i. A child that exits by itself is reported; with ``restart`` a crashed one is started
again after a growing pause (so a child that cannot start does not spin). SIGINT and SIGTERM
stop every child with SIGTERM (SIGKILL after a deadline) and end with exit 0.

``cluster --failover`` (``kevo_repl/cluster_failover.py``) is a variant of ``ClusterProcesses``:
members that elect their leader through a local etcd, run by the same ``run_processes``.

``run_demo`` is the README's first command: it starts a cluster, loads demo data, waits until
every replica's digest equals the primary's at the same LSN, shows the status table, and keeps
the cluster running until Ctrl-C (or stops at once with ``--exit``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kevo_repl.client import Client, NodeUnreachableError
from kevo_repl.core.errors import KevoError
from kevo_repl.logview import LogFollower, run_logs
from kevo_repl.status_format import status_text

__all__ = [
    "ClusterProcesses",
    "check_port_free",
    "exit_text",
    "run_cluster",
    "run_demo",
    "run_processes",
]

RESTART_PAUSE_MAX_S = 5.0


@dataclass(slots=True)
class _Child:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0


@dataclass(slots=True)
class ClusterProcesses:
    """Starts, watches and stops the children; their logs go to ``data/logs``."""

    data: Path
    replicas: int
    port: int
    restart: bool = False
    metrics_port: int = 0  # 0: none; else the primary on it, replica i on it + i
    node_args: Sequence[str] = ()  # extra flags for every node (--log-level ...)
    out: IO[str] = field(default_factory=lambda: sys.stdout)  # the nodes' log lines
    notes: IO[str] = field(default_factory=lambda: sys.stderr)  # the cluster's own lines
    children: list[_Child] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log_dir(self) -> Path:
        return self.data / "logs"

    def endpoints(self) -> list[tuple[str, str]]:
        eps = [("primary", f"127.0.0.1:{self.port}")]
        eps += [
            (f"replica-{i}", f"127.0.0.1:{self.port + 10 * i}") for i in range(1, self.replicas + 1)
        ]
        return eps

    def check_ports(self) -> None:
        """Refuse to start over ports in use (``check_port_free``), before anything starts."""
        for name, ep in self.endpoints():
            port = int(ep.rsplit(":", 1)[1])
            check_port_free(name, port)
            check_port_free(name, port + 1)

    def node_argv(self, i: int, name: str, port: int) -> list[str]:
        """The command of node ``i`` of ``endpoints()`` (0: the primary), before the flags
        every node gets."""
        argv = ["primary" if i == 0 else "replica", "--data", str(self.data / name)]
        argv += ["--port", str(port)]
        if i > 0:
            argv += ["--id", name, "--primary", f"127.0.0.1:{self.port}"]
        return argv

    def start(self) -> None:
        self.check_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.spawn_nodes()

    def spawn_nodes(self) -> None:
        tail = ["--log-format", "json", *self.node_args]
        for i, (name, ep) in enumerate(self.endpoints()):
            port = int(ep.rsplit(":", 1)[1])
            argv = [sys.executable, "-m", "kevo_repl", *self.node_argv(i, name, port), *tail]
            if self.metrics_port:
                argv += ["--metrics-port", str(self.metrics_port + i)]
            self.children.append(_Child(name, argv, port))
        for child in self.children:
            self._spawn(child)

    def watch(self, stop: threading.Event) -> None:
        """Report (and with ``restart``, restart) exited children until ``stop`` is set."""
        while not stop.wait(0.1):
            now = time.monotonic()
            self.watch_more(now)
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._exited(child, now)
                if child.proc is None and child.restart_at and now >= child.restart_at:
                    if stop.is_set():
                        return
                    child.restart_at = 0.0
                    child.restarts += 1
                    self._spawn(child)
                    pid = child.proc.pid if child.proc is not None else "?"
                    self.say(
                        f"[cluster] restarted {child.name} as PID {pid} (restart {child.restarts})"
                    )

    def watch_more(self, now: float) -> None:
        """Each turn of ``watch``: what a variant runs beside the nodes (nothing here)."""

    def announce(self, stop: threading.Event) -> None:
        """Once every node serves: what a variant says about reaching it (nothing here)."""

    def _exited(self, child: _Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        child.proc = None
        if code == 0:
            self.say(f"[cluster] {child.name} stopped (exit code 0)")
            return
        how = exit_text(code)
        self.say(f"[cluster] {child.name} crashed ({how}); log: {self.log_dir / child.name}.log")
        if self.restart:
            child.restart_at = now + min(RESTART_PAUSE_MAX_S, 0.2 * 2**child.restarts)
        else:
            self.say(f"[cluster] {child.name} stays down (use --restart to restart crashed nodes)")

    def stop(self, timeout_s: float = 10.0) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"[cluster] {child.name} did not stop in {timeout_s:.0f}s; killing it")
                child.proc.kill()
                child.proc.wait()

    def wait_serving(self, deadline_s: float = 30.0) -> None:
        for name, ep in self.endpoints():
            child = next(c for c in self.children if c.name == name)
            _wait_until_serving(ep, deadline_s, child)

    def _spawn(self, child: _Child) -> None:
        with (self.log_dir / f"{child.name}.log").open("ab") as log:
            child.proc = subprocess.Popen(
                child.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def say(self, line: str) -> None:
        """A note of the cluster's own (to stderr, as every command's notes go)."""
        with self._lock:
            self.out.flush()
            print(line, file=self.notes, flush=True)


def exit_text(code: int) -> str:
    """A child's return code as words: ``signal 9`` or ``exit code 1``."""
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def check_port_free(name: str, port: int) -> None:
    """Refuse a port in use: another process there would answer for ``name``.

    The probe binds with SO_REUSEADDR, as libzmq's listeners (and etcd's) do, so a port that
    only has connections in TIME_WAIT from a previous run counts as free.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KevoError(
                f"port {port} for {name} is in use ({exc.strerror}); "
                "is another cluster running? choose another --port"
            ) from None


def _wait_until_serving(node: str, deadline_s: float, child: _Child | None = None) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if child is not None and child.proc is not None and child.proc.poll() is not None:
            raise NodeUnreachableError(f"{child.name} exited with {child.proc.returncode}")
        try:
            with Client(node, timeout_ms=500) as c:
                c.status_message()
            return
        except NodeUnreachableError:
            if time.monotonic() > end:
                raise


def _serve_until_stopped(cluster: ClusterProcesses, stop: threading.Event) -> int:
    try:
        cluster.watch(stop)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.say("[cluster] stopping every node")
        cluster.stop()
    return 0


def _on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def run_cluster(
    data: Path,
    replicas: int,
    port: int,
    *,
    restart: bool = False,
    metrics_port: int = 0,
    node_args: Sequence[str] = (),
) -> int:
    return run_processes(ClusterProcesses(data, replicas, port, restart, metrics_port, node_args))


def run_processes(cluster: ClusterProcesses) -> int:
    """Start ``cluster``, show its nodes' logs merged, and keep it up until SIGINT/SIGTERM."""
    stop = threading.Event()
    _on_signals(stop)
    cluster.check_ports()
    names = frozenset(name for name, _ in cluster.endpoints())
    follower = LogFollower(cluster.log_dir, names, start_at_end=True)
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    follower.poll()  # note where each existing file ends: show only this run's lines
    cluster.start()
    for i, (name, ep) in enumerate(cluster.endpoints()):
        host, port_text = ep.rsplit(":", 1)
        proc = cluster.children[i].proc
        metrics = f", metrics {host}:{cluster.metrics_port + i}" if cluster.metrics_port else ""
        cluster.say(
            f"[cluster] {name}: PUB {ep}, ROUTER {host}:{int(port_text) + 1}{metrics}"
            f" (pid {proc.pid if proc else '-'})"
        )
    data = cluster.data
    cluster.say(f"[cluster] logs: {cluster.log_dir}/<node>.log (kevo-repl logs --data {data})")
    logs_stop = threading.Event()
    shower = threading.Thread(
        target=run_logs,
        args=(follower, _Locked(cluster)),
        kwargs={"follow": True, "stop": logs_stop},
        daemon=True,
    )
    shower.start()
    try:
        cluster.wait_serving()
        cluster.say("[cluster] ready; Ctrl-C stops every node")
        cluster.announce(stop)
        code = _serve_until_stopped(cluster, stop)
    except NodeUnreachableError as exc:
        # A node that cannot start (a port in use, a bad data dir) fails the whole cluster:
        # a half-started cluster would only hide the reason.
        cluster.say(f"[cluster] a node did not come up: {exc}; see its log above")
        cluster.stop()
        code = 1
    logs_stop.set()
    shower.join(5)
    cluster.say("[cluster] stopped")
    return code


class _Locked:
    """A text stream that writes through the cluster's lock, so lines never interleave."""

    def __init__(self, cluster: ClusterProcesses) -> None:
        self.cluster = cluster

    def write(self, text: str) -> int:
        with self.cluster._lock:
            self.cluster.out.write(text)
        return len(text)

    def flush(self) -> None:
        with self.cluster._lock:
            self.cluster.out.flush()


def run_demo(data: Path, replicas: int, port: int, keys: int, *, exit_after: bool) -> int:
    stop = threading.Event()
    cluster = ClusterProcesses(data, replicas, port)
    cluster.start()
    try:
        eps = cluster.endpoints()
        primary = eps[0][1]
        cluster.wait_serving()
        print(f"cluster up: primary {primary}, replicas {', '.join(ep for _, ep in eps[1:])}")
        started = time.monotonic()
        with Client(primary) as c:
            last = 0
            for start in range(0, keys, 500):
                batch = [
                    (f"user:{i:08d}".encode(), f"demo value {i}".encode())
                    for i in range(start, min(keys, start + 500))
                ]
                last = c.batch(batch).lsn
            elapsed = time.monotonic() - started
            print(f"wrote {keys} keys up to LSN {last} in {elapsed:.2f}s")
            want = c.digest()
        end = time.monotonic() + 60
        for name, ep in eps[1:]:
            while True:
                with Client(ep) as r:
                    got = r.digest()
                if got.lsn >= want.lsn or time.monotonic() > end:
                    break
                time.sleep(0.05)
            same = "identical" if got.digest == want.digest and got.lsn == want.lsn else "DIFFERENT"
            print(f"{name} at LSN {got.lsn}: digest {got.digest[:16]}... {same} to the primary's")
        with Client(primary) as c:
            print()
            print(status_text(c.status_message()))
    except BaseException:
        print(f"node logs: {cluster.log_dir}", file=sys.stderr)
        cluster.stop()
        raise
    if exit_after:
        cluster.stop()
        return 0
    print(f"\ntry: kevo-repl get --node 127.0.0.1:{port + 10} user:00000042  (Ctrl-C stops it)")
    print(f"     kevo-repl logs --data {data}")
    _on_signals(stop)
    code = _serve_until_stopped(cluster, stop)
    cluster.say("[cluster] stopped")
    return code
