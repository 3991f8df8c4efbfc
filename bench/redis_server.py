"""redis-server processes for the side-by-side rows: loopback ports, temp dirs, ended by PID.

A server can also run elsewhere (``prefix``: ``ip netns exec NS``), bound to ``host`` and to
that namespace's loopback, for the WAN rows. Also a minimal RESP client (no dependency) and
bulk loading through ``redis-cli --pipe``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import end_process, wait_until
from kevo_repl.testing.ports import free_port

__all__ = [
    "INSTALL_HINT",
    "RedisCluster",
    "Resp",
    "encode_command",
    "pipe_load",
    "redis_available",
    "redis_cluster",
]

INSTALL_HINT = "redis-server not found: apt-get install -y redis-server redis-tools"
AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")
NO_AOF = ("--appendonly", "no")
LOOPBACK = "127.0.0.1"


def redis_available() -> bool:
    return all(shutil.which(t) for t in ("redis-server", "redis-benchmark", "redis-cli"))


def encode_command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    """One blocking RESP connection; enough for INFO, CONFIG, SHUTDOWN, DBSIZE."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: str | bytes) -> Any:
        self.sock.sendall(encode_command(*(a.encode() if isinstance(a, str) else a for a in args)))
        return self._reply()

    def info(self, section: str = "") -> dict[str, str]:
        text = self.call("INFO", section) if section else self.call("INFO")
        out: dict[str, str] = {}
        for line in text.decode().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected RESP reply {line[:40]!r}")


def _answers(port: int, host: str = LOOPBACK) -> bool:
    try:
        with Resp(port, timeout=1, host=host) as r:
            return bool(r.call("PING") == b"PONG")
    except (OSError, RuntimeError):
        return False


@dataclass
class RedisCluster:
    """redis-server processes under one temp dir; ``stop()`` ends them all by PID."""

    root: Path
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # where each is reached (loopback)

    def start(
        self,
        name: str,
        *args: str,
        replica_of: int = 0,
        port: int = 0,
        prefix: Sequence[str] = (),
        host: str = LOOPBACK,
        primary_host: str = LOOPBACK,
    ) -> int:
        """Start ``name`` and wait until it answers; a replica of ``primary_host:replica_of``
        if given. Under ``prefix`` it binds ``host`` and its namespace's loopback."""
        port = port or free_port()
        data = self.root / name
        data.mkdir(exist_ok=True)
        argv = [
            "redis-server",
            "--port", str(port),
            "--bind", *((host,) if host == LOOPBACK else (host, LOOPBACK)),
            "--dir", str(data),
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(data / "redis.log"),
            "--notify-keyspace-events", "E$",
            "--repl-backlog-size", "256mb",
            "--repl-diskless-sync-delay", "0",
            *args,
        ]  # fmt: skip
        if replica_of:
            argv += ["--replicaof", primary_host, str(replica_of)]
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs[name] = (proc, port)
        self.hosts[name] = host
        wait_until(f"redis {name} answers", lambda: _answers(port, host), 30, 0.01)
        return port

    def resp(self, name: str) -> Resp:
        """A connection to ``name`` where it is reached."""
        return Resp(self.procs[name][1], host=self.hosts.get(name, LOOPBACK))

    def pid(self, name: str) -> int:
        return self.procs[name][0].pid

    def synced(self, name: str) -> bool:
        """The replica's link is up and its initial sync is over."""
        with self.resp(name) as r:
            info = r.info("replication")
        return info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == "0"

    def online(self, name: str) -> int:
        """How many replicas the primary ``name`` streams to (state=online)."""
        with self.resp(name) as r:
            info = r.info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and "state=online" in v)

    def offset(self, name: str) -> int:
        with self.resp(name) as r:
            return int(r.info("replication").get("master_repl_offset", "0"))

    def caught_up(self, replica: str, primary: str) -> bool:
        return self.synced(replica) and self.offset(replica) >= self.offset(primary)

    def shutdown_save(self, name: str) -> None:
        """SHUTDOWN SAVE: the replica keeps its replication id and offset for a partial resync."""
        proc, _ = self.procs[name]
        try:
            with self.resp(name) as r:
                r.call("SHUTDOWN", "SAVE")
        except (ConnectionError, OSError):
            pass  # the server closes the connection as it exits
        proc.wait(60)

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc, _ in self.procs.values():
            end_process(proc)


@contextmanager
def redis_cluster() -> Iterator[RedisCluster]:
    with tempfile.TemporaryDirectory(
        prefix="kevo-bench-redis-", dir=os.environ.get("KEVO_BENCH_DIR")
    ) as d:
        cluster = RedisCluster(Path(d))
        try:
            yield cluster
        finally:
            cluster.stop()


def pipe_load(port: int, count: int, key_format: bytes, start: int = 0) -> float:
    """SET ``count`` keys (100 B values) through ``redis-cli --pipe``; returns seconds."""
    value = b"v" * 100
    body = b"".join(
        encode_command(b"SET", key_format % i, value) for i in range(start, start + count)
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--pipe"],
        input=body,
        capture_output=True,
        timeout=600,
    )
    if done.returncode != 0 or b"errors: 0" not in done.stdout:
        raise RuntimeError(f"redis-cli --pipe failed: {done.stdout[-300:]!r}")
    return time.perf_counter() - t0
