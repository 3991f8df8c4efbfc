"""``kevo-repl cluster --failover``: a local etcd and N members that elect their leader.

The members are ``kevo-repl node`` processes (ids n1..nN, PUB on P, P+10, ..., ROUTER one
above each), all with ``--etcd`` pointing at one single-member etcd on 127.0.0.1:P+90 (peer
port P+91; data in ``DIR/etcd``, log in ``DIR/logs/etcd.log``). Running, merging the logs,
reporting and ``--restart``-ing crashed members, and stopping on SIGINT/SIGTERM are the plain
cluster's (``kevo_repl/cluster.py``); this module adds etcd, which starts before the members
and stops after them: a member that stops revokes its lease there, so neither the others nor
the next run wait a TTL for its key to go.

A rerun on the same DIR is the same group: etcd's data (the scope: who led, up to which LSN)
and every member's data are where they were, and the members elect again from them (the most
advanced one leads). Where no etcd binary is found nothing starts: ``ETCD_MISSING`` says how
to install one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kevo_repl.client import Client, NodeUnreachableError
from kevo_repl.cluster import (
    RESTART_PAUSE_MAX_S,
    ClusterProcesses,
    check_port_free,
    exit_text,
    run_processes,
)
from kevo_repl.core.errors import KevoError
from kevo_repl.ha.local_etcd import ETCD_MISSING, LocalEtcd, etcd_binary

__all__ = ["FailoverProcesses", "run_failover_cluster"]

ETCD_OFFSET = 90  # etcd on P+90: above the ports of up to 9 members (P .. P+81)
ETCD_RESTART_PAUSE_S = 1.0
LEADER_WAIT_S = 30.0  # beyond the TTL: an election needs every member's fresh record first


@dataclass
class FailoverProcesses(ClusterProcesses):
    """The members and their etcd; ``replicas`` is N - 1 (one member leads at a time).

    Not a slots dataclass, unlike its base: zero-argument ``super()`` fails in one.
    """

    ttl_s: int = 10
    etcd: LocalEtcd = field(init=False)
    _etcd_restart_at: float = 0.0

    def __post_init__(self) -> None:
        self.etcd = LocalEtcd(self.data / "etcd", self.etcd_port, self.log_dir / "etcd.log")

    @property
    def members(self) -> int:
        return self.replicas + 1

    @property
    def etcd_port(self) -> int:
        """P+90, or just above the last member's ports for a group of more than 9."""
        return self.port + max(ETCD_OFFSET, 10 * self.members)

    def endpoints(self) -> list[tuple[str, str]]:
        return [(f"n{i + 1}", f"127.0.0.1:{self.port + 10 * i}") for i in range(self.members)]

    def node_argv(self, i: int, name: str, port: int) -> list[str]:
        return [
            "node", "--data", str(self.data / name), "--id", name, "--port", str(port),
            "--etcd", self.etcd.url, "--ttl-s", str(self.ttl_s),
        ]  # fmt: skip

    def check_ports(self) -> None:
        if self.etcd_port + 1 > 65535:
            raise KevoError(f"etcd would listen on {self.etcd_port}: choose a lower --port")
        super().check_ports()
        check_port_free("etcd", self.etcd_port)
        check_port_free("etcd", self.etcd_port + 1)

    def start(self) -> None:
        self.check_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.etcd.start()
        self.say(
            f"[cluster] etcd: {self.etcd.url} (pid {self._etcd_pid()}, data {self.etcd.data_dir},"
            f" log {self.etcd.log_path})"
        )
        try:
            self.spawn_nodes()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            super().stop(timeout_s)
        finally:
            self.etcd.stop(timeout_s)

    def watch_more(self, now: float) -> None:
        """An etcd that exits by itself is reported (the members keep serving reads; the
        leader stops taking writes when its lease ends); with ``restart`` it is started again
        on its data, as a crashed member is."""
        proc = self.etcd.proc
        if proc is not None and proc.poll() is not None:
            self.etcd.proc = None
            self.say(
                f"[cluster] etcd exited ({exit_text(proc.returncode)}); log: {self.etcd.log_path}"
            )
            if self.restart:
                self._etcd_restart_at = now + ETCD_RESTART_PAUSE_S
            else:
                self.say("[cluster] etcd stays down (use --restart to restart it)")
        if self._etcd_restart_at and now >= self._etcd_restart_at:
            self._etcd_restart_at = 0.0
            try:
                self.etcd.start(timeout_s=10)
            except KevoError as exc:
                self.etcd.stop()
                self.say(f"[cluster] etcd did not start again: {exc}")
                self._etcd_restart_at = time.monotonic() + RESTART_PAUSE_MAX_S
                return
            self.say(f"[cluster] restarted etcd as PID {self._etcd_pid()}")

    def announce(self, stop: threading.Event) -> None:
        """Wait for a leader (or a stop), then say who it is and how to reach the group."""
        leader = self._wait_leader(stop, LEADER_WAIT_S + 3 * self.ttl_s)
        if stop.is_set():
            return
        if leader:
            self.say(f"[cluster] leader: {leader}")
        else:
            self.say(
                "[cluster] no leader yet; see why: "
                f"kevo-repl logs --data {self.data} --level warning"
            )
        first = self.endpoints()[0][1]
        self.say(f"[cluster] a member: kevo-repl status --node {first} (each: P, P+10, ...)")
        self.say(f"[cluster] the group: kevo-repl status --etcd {self.etcd.url}")
        self.say(
            f"[cluster] writes go to any member (a replica sends them on to the leader): "
            f"kevo-repl put --node {first} KEY VALUE"
        )

    def _wait_leader(self, stop: threading.Event, deadline_s: float) -> str:
        """``name (HOST:PORT)`` of the member that is a primary taking writes, or ""."""
        end = time.monotonic() + deadline_s
        while not stop.is_set() and time.monotonic() < end:
            for name, ep in self.endpoints():
                try:
                    with Client(ep, timeout_ms=500) as c:
                        s = c.status()
                except NodeUnreachableError:
                    continue
                if s.role == "primary" and not s.fenced:
                    return f"{name} ({ep})"
            stop.wait(0.1)
        return ""

    def _etcd_pid(self) -> int | str:
        return self.etcd.proc.pid if self.etcd.proc is not None else "-"


def run_failover_cluster(
    data: Path,
    members: int,
    port: int,
    *,
    ttl_s: int,
    restart: bool = False,
    metrics_port: int = 0,
    node_args: Sequence[str] = (),
) -> int:
    if etcd_binary() is None:  # before any port is probed or file written
        raise KevoError(ETCD_MISSING)
    group = FailoverProcesses(
        data, members - 1, port, restart, metrics_port, node_args, ttl_s=ttl_s
    )
    return run_processes(group)
