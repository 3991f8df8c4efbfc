"""Real node processes for tests: start on free loopback ports, wait for them, end them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kevo_repl.client import Client, Digest, NodeUnreachableError
from kevo_repl.testing.ports import free_port_pair

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    last_exc: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (NodeUnreachableError, ConnectionError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} ({last_exc})")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass
class Node:
    name: str
    port: int
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to ours, at every (re)start
    host: str = "127.0.0.1"  # or an address inside or beside a network namespace

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Node:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        return self

    def client(self, timeout_ms: int = 3000) -> Client:
        return Client(self.address, timeout_ms=timeout_ms)

    def wait_serving(self, timeout_s: float = 30.0) -> None:
        def serving() -> bool:
            self.assert_alive()
            with self.client(300) as c:
                c.status_message()
            return True

        wait_for(f"{self.name} to serve", serving, timeout_s)

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}"
            )

    def digest(self) -> Digest:
        with self.client() as c:
            return c.digest()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (clean stop), SIGKILL if it does not finish in time; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    """Nodes started by one test; ``close`` ends every one of them by PID."""

    root: Path
    nodes: list[Node] = field(default_factory=list)

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kevo_repl", "--log-format", "json", *args]

    def primary(
        self, name: str = "primary", *extra: str, port: int = 0, env: dict[str, str] | None = None
    ) -> Node:
        port = port or free_port_pair()
        data = self.root / name
        argv = self._cmd("primary", "--data", str(data), "--port", str(port), *extra)
        node = Node(name, port, argv, self.root / f"{name}.log", env=env or {}).start()
        self.nodes.append(node)
        node.wait_serving()
        return node

    def replica(
        self,
        name: str,
        primary: Node | str,
        *extra: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Node:
        port = port or free_port_pair()
        target = primary.address if isinstance(primary, Node) else primary
        argv = self._cmd(
            "replica",
            "--data",
            str(self.root / name),
            "--primary",
            target,
            "--port",
            str(port),
            "--id",
            name,
            "--heartbeat-ms",
            "100",
            *extra,
        )
        node = Node(name, port, argv, self.root / f"{name}.log", env=env or {}).start()
        self.nodes.append(node)
        if wait:
            node.wait_serving()
        return node

    def restart(self, node: Node) -> Node:
        node.start()
        node.wait_serving()
        return node

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.kill()

    def logs(self) -> Iterator[str]:
        for node in self.nodes:
            yield f"--- {node.name} ---\n{node.log_tail()}"


def replica_view(primary: Node, replica_id: str) -> dict[str, object] | None:
    """The primary's Status entry for one replica, as a dict (None if not listed)."""
    with primary.client() as c:
        status = c.status_message()
    for r in status.replicas:
        if r.replica_id == replica_id:
            return {
                "status": r.status,
                "applied_lsn": r.applied_lsn,
                "lag_entries": r.lag_entries,
                "lag_ms": r.lag_ms,
                "bootstraps": r.bootstraps,
                "catchups": r.catchups,
                "progress": r.bootstrap_progress,
                "role": r.role,
                "address": r.address,
                "last_seen_ms": r.last_seen_ms,
            }
    return None


def converged(primary: Node, *replicas: Node) -> Digest | None:
    """The common digest once every replica equals the primary at the same LSN, else None."""
    want = primary.digest()
    for r in replicas:
        r.assert_alive()
        got = r.digest()
        if got != want:
            return None
    return want
