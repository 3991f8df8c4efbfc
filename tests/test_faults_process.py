"""Process faults under a steady write load (fsync=always): SIGKILL, SIGSTOP, random loops.

Every test runs a primary, two replicas, one bounded writer recording each acknowledged
write and an ``LsnMonitor`` sampling every node's Status. After the faults: every
acknowledged write is on the primary and the replicas, replicas are digest-equal to the
primary at the same LSN, no applied LSN went backwards, and the number of bootstraps is
exactly the expected one (zero while the WAL covers every outage).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kevo_repl.wire import pb
from tests.faults.checkers import LsnMonitor, count_events, verify_acked, wait_converged
from tests.faults.injector import FaultRun
from tests.faults.load import Writer
from tests.nodes import Cluster, Node, replica_view, wait_for

SEED = int(os.environ.get("FAULT_SEED", "7"))


@dataclass
class Rig:
    cluster: Cluster
    primary: Node
    replicas: list[Node]
    writer: Writer
    monitor: LsnMonitor

    def finish(self, expected_bootstraps: int = 0, expected_refused: int = 0) -> None:
        """Stop the load, then check every invariant (DESIGN.md section 5)."""
        self.writer.stop()
        assert not self.writer.errors, self.writer.errors
        log = self.writer.acked
        assert len(log) > 100, "the load never ran"
        # A refused write is one the primary answered with an error: none of these faults
        # gives it a reason to refuse a valid put (a dead or frozen primary gives no answer).
        assert log.refused == expected_refused, (
            f"{log.refused} writes refused, expected {expected_refused}: {log.refusals}"
        )
        expected = log.expected()
        seconds = wait_converged(self.primary, self.replicas)
        self.monitor.stop()
        self.monitor.check()
        verified = verify_acked(self.primary, expected)
        for r in self.replicas:
            verify_acked(r, expected)
        boots = {r.name: count_events(r.log_path, "bootstrap_start") for r in self.replicas}
        assert sum(boots.values()) == expected_bootstraps, boots
        print(
            f"acked={len(log)} keys_verified={verified} unknown={log.unknown} "
            f"refused={log.refused} converged_in={seconds:.2f}s bootstraps={boots} "
            f"samples={self.monitor.samples}"
        )


@pytest.fixture
def rig(cluster: Cluster) -> Iterator[Rig]:
    primary = cluster.primary("primary", "--fsync", "always")
    replicas = [cluster.replica(f"r{i}", primary) for i in range(2)]
    writer = Writer(primary.address, max_writes=100_000, max_seconds=240)
    monitor = LsnMonitor(primary, replicas).start()
    writer.start()
    try:
        wait_for("load running", lambda: len(writer.acked) > 200)
        yield Rig(cluster, primary, replicas, writer, monitor)
    finally:
        writer.stop()
        monitor.stop()


def test_sigkill_primary_under_load(rig: Rig) -> None:
    run = FaultRun(rig.cluster, rig.primary, rig.replicas, rig.writer, rig.monitor, SEED)
    for _ in range(2):
        run.inject("kill_primary")
    assert rig.writer.acked.unknown >= 1  # the kill cut at least one write short
    rig.finish()


def test_sigkill_replicas_under_load(rig: Rig) -> None:
    run = FaultRun(rig.cluster, rig.primary, rig.replicas, rig.writer, rig.monitor, SEED)
    run.inject("kill_replica")
    run.inject("kill_all_replicas")
    rig.finish()


def test_sigstop_replica_past_the_heartbeat_timeout(rig: Rig) -> None:
    run = FaultRun(rig.cluster, rig.primary, rig.replicas, rig.writer, rig.monitor, SEED)
    before = len(rig.writer.acked)
    record = run.inject("stop_replica_past_timeout")
    assert len(rig.writer.acked) > before + 100  # the frozen replica never stalled writes

    def ready_again() -> bool:
        v = replica_view(rig.primary, record["target"])
        return v is not None and v["status"] == pb.STATUS_READY

    wait_for("resumed replica ready", ready_again)
    rig.finish()


def test_twenty_random_faults(rig: Rig) -> None:
    run = FaultRun(rig.cluster, rig.primary, rig.replicas, rig.writer, rig.monitor, SEED)
    run.kinds.pop("stop_primary_past_timeout")  # > 3 s each: the soak covers it
    for _ in range(20):
        run.random_fault()
    kinds = {f["kind"] for f in run.faults}
    assert len(run.faults) == 20 and len(kinds) >= 3, run.faults
    print(f"longest convergence {run.longest_convergence_s:.2f}s")
    rig.finish()


def test_exactly_one_bootstrap_when_the_wal_no_longer_covers_the_outage(
    cluster: Cluster,
) -> None:
    primary = cluster.primary("primary", "--retention-bytes", "400000", "--segment-bytes", "65536")
    r0 = cluster.replica("r0", primary)
    writer = Writer(primary.address, max_writes=60_000, max_seconds=120, value_bytes=200)
    monitor = LsnMonitor(primary, [r0]).start()
    writer.start()
    try:
        wait_for("load running", lambda: len(writer.acked) > 200)
        r0.kill()
        gone_at = int(r0_applied(primary))

        def wal_passed_r0() -> bool:
            with primary.client() as c:
                return c.status_message().retained_from_lsn > gone_at + 1

        wait_for("retention passes the dead replica", wal_passed_r0, 120)
        cluster.restart(r0)
        wait_for("r0 bootstrapped", lambda: count_events(r0.log_path, "bootstrap_done") == 1, 60)
        # A short outage afterwards is covered by the WAL: no second bootstrap.
        r0.kill()
        cluster.restart(r0)
    finally:
        writer.stop()
    wait_converged(primary, [r0])
    monitor.stop()
    monitor.check()
    assert not writer.errors, writer.errors
    assert writer.acked.refused == 0, f"{writer.acked.refused} writes refused"
    verify_acked(primary, writer.acked.expected())
    verify_acked(r0, writer.acked.expected())
    assert count_events(r0.log_path, "bootstrap_start") == 1
    view = replica_view(primary, "r0")
    assert view is not None and view["bootstraps"] == 1


def r0_applied(primary: Node) -> int:
    v = replica_view(primary, "r0")
    return int(v["applied_lsn"]) if v else 0  # type: ignore[call-overload]
