"""Random process faults under load, each healed and timed: shared by tests and the soak.

A ``FaultRun`` owns nothing it did not start: the cluster's nodes, one writer, one monitor.
Every fault is printed (seed, index, kind, target), then healed, then the replicas must
apply what the primary had committed within a deadline; the time that takes is the fault's
convergence time. Pauses are fault *parameters* (how long a process stays frozen), never
waits for a condition: those all poll with a deadline.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kevo_repl.client import Client, NodeUnreachableError
from kevo_repl.wire import pb
from tests.faults.checkers import LsnMonitor, wait_caught_up
from tests.faults.load import AckLog, Writer
from tests.faults.power import cut_wal_at_last_sync, damage_store, rss_anon_mib
from tests.faults.raw import stalled_subscriber
from tests.nodes import Cluster, Node, replica_view, wait_for

__all__ = ["FAULT_KINDS", "POWER_FAULT_KINDS", "FaultRun"]

MIB = 1024 * 1024

# kind -> weight in a random run
FAULT_KINDS: dict[str, int] = {
    "kill_primary": 3,
    "kill_replica": 4,
    "stop_replica": 3,
    "restart_replica": 2,
    "kill_all_replicas": 1,
    "stop_replica_past_timeout": 1,
    "stop_primary_past_timeout": 1,
}
# Need the primary started with SYNC_LOG_ENV set (``FaultRun.sync_log``): the soak does.
POWER_FAULT_KINDS: dict[str, int] = {
    "power_loss_primary": 2,
    "big_write": 2,
    "stalled_subscriber": 1,
}
STALLED_SUBSCRIBER_MAX_GROWTH_MIB = 100  # the PUB budget is 64 MiB per subscriber


@dataclass
class FaultRun:
    cluster: Cluster
    primary: Node
    replicas: list[Node]
    writer: Writer
    monitor: LsnMonitor
    seed: int
    kinds: dict[str, int] = field(default_factory=lambda: dict(FAULT_KINDS))
    converge_timeout_s: float = 60.0
    sync_log: Path | None = None  # the primary's KEVO_WAL_SYNC_LOG (power-loss faults)
    faults: list[dict[str, Any]] = field(default_factory=list)
    side_log: AckLog = field(default_factory=AckLog)  # writes the faults make themselves
    problems: list[str] = field(default_factory=list)  # a fault whose own check failed
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def longest_convergence_s(self) -> float:
        return max((f["convergence_s"] for f in self.faults), default=0.0)

    def random_fault(self) -> dict[str, Any]:
        kinds = list(self.kinds)
        kind = self.rng.choices(kinds, weights=[self.kinds[k] for k in kinds])[0]
        return self.inject(kind)

    def inject(self, kind: str) -> dict[str, Any]:
        target = self.primary
        if "replica" in kind and kind != "kill_all_replicas":
            target = self.rng.choice(self.replicas)
        name = "all replicas" if kind == "kill_all_replicas" else target.name
        record: dict[str, Any] = {"n": len(self.faults) + 1, "kind": kind, "target": name}
        print(f"fault seed={self.seed} #{record['n']}: {kind} {name}", flush=True)
        started = time.monotonic()
        getattr(self, f"_{kind}")(target, record)
        healed = time.monotonic()
        record["convergence_s"] = round(
            wait_caught_up(self.primary, self.replicas, self.converge_timeout_s), 3
        )
        record["fault_s"] = round(healed - started, 3)
        record["acked_so_far"] = len(self.writer.acked)
        self.faults.append(record)
        return record

    # ---- the faults ------------------------------------------------------------------------

    def _kill_primary(self, node: Node, record: dict[str, Any]) -> None:
        self._some_writes(20)
        node.kill()
        self.cluster.restart(node)

    def _kill_replica(self, node: Node, record: dict[str, Any]) -> None:
        node.kill()
        self._some_writes(self.rng.randint(10, 500))
        self.cluster.restart(node)

    def _restart_replica(self, node: Node, record: dict[str, Any]) -> None:
        assert node.stop() == 0, f"{node.name} did not stop cleanly:\n{node.log_tail()}"
        self._some_writes(50)
        self.cluster.restart(node)

    def _kill_all_replicas(self, node: Node, record: dict[str, Any]) -> None:
        for r in self.replicas:
            r.kill()
        self._some_writes(200)
        for r in self.replicas:
            self.cluster.restart(r)

    def _stop_replica(self, node: Node, record: dict[str, Any]) -> None:
        pause_s = round(self.rng.uniform(0.1, 1.0), 2)
        record["pause_s"] = pause_s
        node.signal(signal.SIGSTOP)
        try:
            time.sleep(pause_s)  # the fault's length, not a wait for a condition
        finally:
            node.signal(signal.SIGCONT)

    def _stop_replica_past_timeout(self, node: Node, record: dict[str, Any]) -> None:
        """Frozen until the primary marks it disconnected (stale after 1.5 s)."""

        def listed() -> bool:  # after a primary restart it may not have registered again yet
            v = replica_view(self.primary, node.name)
            return v is not None and v["status"] != pb.STATUS_DISCONNECTED

        wait_for(f"{node.name} registered", listed, 20)
        node.signal(signal.SIGSTOP)
        try:

            def stale() -> bool:
                v = replica_view(self.primary, node.name)
                return v is not None and v["status"] == pb.STATUS_DISCONNECTED

            wait_for(f"{node.name} marked disconnected", stale, 20)
            self._some_writes(100)
        finally:
            node.signal(signal.SIGCONT)

    def _stop_primary_past_timeout(self, node: Node, record: dict[str, Any]) -> None:
        """Frozen until every replica reports itself disconnected (primary silent > 3 s)."""
        self._some_writes(20)
        node.signal(signal.SIGSTOP)
        try:

            def all_disconnected() -> bool:
                for r in self.replicas:
                    with r.client(500) as c:
                        if c.status_message().status != pb.STATUS_DISCONNECTED:
                            return False
                return True

            wait_for("replicas notice the frozen primary", all_disconnected, 30)
        finally:
            node.signal(signal.SIGCONT)

    def _power_loss_primary(self, node: Node, record: dict[str, Any]) -> None:
        """SIGKILL, then the WAL cut at its last fdatasync: what a power loss leaves. Half the
        time the store file is damaged too (LMDB with writemap and no sync may be)."""
        assert self.sync_log is not None, "the primary runs without KEVO_WAL_SYNC_LOG"
        self._some_writes(20)
        node.kill()
        data = node.log_path.parent / node.name
        record["durable_lsn"] = cut_wal_at_last_sync(data / "wal", self.sync_log)
        if self.rng.random() < 0.5:
            damage_store(data / "state.mdb", self.rng.randrange(1 << 30))
            record["store_damaged"] = True
        self.cluster.restart(node)

    def _big_write(self, node: Node, record: dict[str, Any]) -> None:
        """A batch of three 3 MiB values (over the stream's frame limit: WalSync only) while
        the load goes on; its outcome goes to ``side_log``."""
        n = len(self.faults)
        entries = [(b"big-%d-%d" % (n, i), bytes([65 + i]) * (3 * MIB)) for i in range(3)]
        try:
            with Client(node.address, timeout_ms=30_000) as c:
                written = c.batch(entries)
        except NodeUnreachableError:
            for key, value in entries:
                self.side_log.add_unknown(key, value)
            return
        for i, (key, value) in enumerate(entries):
            self.side_log.add(key, value, written.first_lsn + i)
        record["lsn"] = written.lsn

    def _stalled_subscriber(self, node: Node, record: dict[str, Any]) -> None:
        """A SUB that takes one frame and never reads (a paused ``tail``) for a few hundred
        writes: the primary's anonymous memory must stay within the PUB budget."""
        sub = stalled_subscriber(node.address)
        try:
            assert node.proc is not None
            before = rss_anon_mib(node.proc.pid)
            self._some_writes(self.rng.randint(200, 1000))
            grown = rss_anon_mib(node.proc.pid) - before
        finally:
            sub.close(0)
        record["rss_growth_mib"] = round(grown, 1)
        if grown > STALLED_SUBSCRIBER_MAX_GROWTH_MIB:
            self.problems.append(f"stalled subscriber: primary RSS grew {grown:.0f} MiB")

    def _some_writes(self, n: int) -> None:
        """Let the load make progress while a node is down (bounded, with a deadline)."""
        if not self.writer.is_alive():
            return
        target = len(self.writer.acked) + n
        wait_for(f"{n} more acknowledged writes", lambda: len(self.writer.acked) >= target, 60)
