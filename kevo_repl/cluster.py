"""A local cluster: one primary and N replicas as child processes, logs merged with a prefix.

``run_demo`` is the README's first command: it starts a cluster, loads demo data, waits until
every replica's digest equals the primary's at the same LSN, shows the status table, and keeps
the cluster running until Ctrl-C (or stops at once with ``--exit``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kevo_repl.client import Client, NodeUnreachableError
from kevo_repl.status_format import status_text

__all__ = ["ClusterProcesses", "run_cluster", "run_demo"]


@dataclass(slots=True)
class _Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass(slots=True)
class ClusterProcesses:
    """Starts, watches and stops the children; prints their log lines as ``[name] line``."""

    data: Path
    replicas: int
    port: int
    restart: bool = False
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    children: list[_Child] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def endpoints(self) -> list[tuple[str, str]]:
        eps = [("primary", f"127.0.0.1:{self.port}")]
        eps += [
            (f"replica-{i}", f"127.0.0.1:{self.port + 10 * i}") for i in range(1, self.replicas + 1)
        ]
        return eps

    def start(self) -> None:
        base = [sys.executable, "-m", "kevo_repl", "--log-format", "json"]
        self.children.append(
            _Child(
                "primary",
                [*base, "primary", "--data", str(self.data / "primary"), "--port", str(self.port)],
            )
        )
        for i in range(1, self.replicas + 1):
            name = f"replica-{i}"
            self.children.append(
                _Child(
                    name,
                    [
                        *base,
                        "replica",
                        "--data",
                        str(self.data / name),
                        "--id",
                        name,
                        "--primary",
                        f"127.0.0.1:{self.port}",
                        "--port",
                        str(self.port + 10 * i),
                    ],
                )
            )
        for child in self.children:
            self._spawn(child)

    def watch(self, stop: threading.Event) -> None:
        """Report (and with ``restart``, restart) crashed children until ``stop`` is set."""
        while not stop.wait(0.2):
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    self._say(f"[cluster] {child.name} exited with code {code}")
                    child.proc = None
                    if self.restart:
                        child.restarts += 1
                        self._say(f"[cluster] restarting {child.name} (restart {child.restarts})")
                        self._spawn(child)

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
                child.proc.kill()
                child.proc.wait()

    def _spawn(self, child: _Child) -> None:
        child.proc = subprocess.Popen(child.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(child.name, child.proc), daemon=True).start()

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self._say(f"[{name}] {raw.decode(errors='replace').rstrip()}")

    def _say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out, flush=True)


def _wait_until_serving(node: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with Client(node, timeout_ms=500) as c:
                c.status()
            return
        except NodeUnreachableError:
            if time.monotonic() > end:
                raise


def _serve_until_interrupted(cluster: ClusterProcesses) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.watch(stop)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def run_cluster(data: Path, replicas: int, port: int, *, restart: bool = False) -> int:
    cluster = ClusterProcesses(data, replicas, port, restart)
    cluster.start()
    for name, ep in cluster.endpoints():
        host, port_text = ep.rsplit(":", 1)
        print(f"[cluster] {name}: PUB {ep}, ROUTER {host}:{int(port_text) + 1}", flush=True)
    print("[cluster] Ctrl-C stops every node", flush=True)
    return _serve_until_interrupted(cluster)


def run_demo(data: Path, replicas: int, port: int, keys: int, *, exit_after: bool) -> int:
    import io

    logs = io.StringIO()  # node logs stay quiet during the demo; printed if something fails
    cluster = ClusterProcesses(data, replicas, port, out=logs)
    cluster.start()
    try:
        eps = cluster.endpoints()
        primary = eps[0][1]
        for _, ep in eps:
            _wait_until_serving(ep, 30)
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
            print(status_text(c.status()))
    except Exception:
        print(logs.getvalue(), file=sys.stderr)
        cluster.stop()
        raise
    if exit_after:
        cluster.stop()
        return 0
    print(f"\ntry: kevo-repl get --node 127.0.0.1:{port + 10} user:00000042  (Ctrl-C stops it)")
    cluster.out = sys.stdout
    return _serve_until_interrupted(cluster)
