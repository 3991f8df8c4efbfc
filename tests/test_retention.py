"""WAL retention keeps what known replicas need, between a floor and a hard cap.

Before: retention was by bytes only. A replica that was down for longer than the floor's
worth of writes, or one that bootstrapped while more than the floor was written, found its
position retained away and bootstrapped (again: possibly forever, Redis's most reported
replication complaint).
"""

from __future__ import annotations

import signal

from kevo_repl.core.retention import SegmentSpan, plan_retention
from kevo_repl.wire import pb
from tests.faults.checkers import count_events
from tests.nodes import Cluster, Node, converged, wait_for
from tests.test_replication_e2e import write_batches

SEGS = [SegmentSpan(10, 100), SegmentSpan(20, 100), SegmentSpan(30, 100), SegmentSpan(35, 50)]


def test_the_floor_is_kept_whatever_replicas_need() -> None:
    assert plan_retention(SEGS, None, keep_size=350, max_size=1000).drop == 0
    assert plan_retention(SEGS, None, keep_size=200, max_size=1000).drop == 2


def test_a_replica_need_holds_segments_above_the_floor() -> None:
    plan = plan_retention(SEGS, needed_lsn=15, keep_size=100, max_size=1000)
    assert (plan.drop, plan.held, plan.capped) == (1, True, False)  # 11..20 still needed
    plan = plan_retention(SEGS, needed_lsn=31, keep_size=100, max_size=1000)
    assert (plan.drop, plan.held) == (3, False)


def test_the_cap_drops_what_replicas_need() -> None:
    plan = plan_retention(SEGS, needed_lsn=5, keep_size=100, max_size=260)
    assert (plan.drop, plan.capped, plan.held) == (1, True, True)  # down to the cap, no more
    plan = plan_retention(SEGS, needed_lsn=5, keep_size=100, max_size=200)
    assert (plan.drop, plan.capped) == (2, True)


def test_the_active_segment_is_never_dropped() -> None:
    assert plan_retention(SEGS, needed_lsn=None, keep_size=0, max_size=0).drop == 3


SMALL = ["--retention-bytes", "131072", "--segment-bytes", "65536"]


def held_by(primary: Node) -> str:
    with primary.client() as c:
        return str(c.status_message().retention_held_by)


def test_a_stopped_replica_resumes_by_catch_up_while_under_the_cap(cluster: Cluster) -> None:
    primary = cluster.primary("primary", *SMALL, "--retention-max-bytes", "64000000")
    replica = cluster.replica("r1", primary)
    write_batches(primary, batches=10, size=100, value_bytes=200)
    wait_for("r1 caught up", lambda: converged(primary, replica))
    replica.stop()
    write_batches(primary, batches=40, size=100, prefix="while-down", value_bytes=200)  # 1 MB
    wait_for("r1 holds the WAL", lambda: held_by(primary) == "r1", 10)
    cluster.restart(replica)
    wait_for("r1 caught up again", lambda: converged(primary, replica), 30)
    assert count_events(replica.log_path, "bootstrap_start") == 0
    write_batches(primary, batches=4, size=100, prefix="after", value_bytes=200)
    wait_for("the hold is released", lambda: held_by(primary) == "", 10)


def test_past_the_cap_a_stopped_replica_bootstraps_once(cluster: Cluster) -> None:
    primary = cluster.primary("primary", *SMALL, "--retention-max-bytes", "300000")
    replica = cluster.replica("r1", primary)
    write_batches(primary, batches=10, size=100, value_bytes=200)
    wait_for("r1 caught up", lambda: converged(primary, replica))
    replica.stop()
    write_batches(primary, batches=40, size=100, prefix="while-down", value_bytes=200)
    wait_for(
        "the cap passed r1",
        lambda: count_events(primary.log_path, "wal_cap_passed_replicas") >= 1,
        10,
    )
    replica.argv.append("--no-bootstrap")  # honoured for a retained-away position too
    cluster.restart(replica)

    def refused() -> str | None:
        with replica.client() as c:
            s = c.status_message()
        return s.error_message if s.status == pb.STATUS_ERROR else None

    assert "--no-bootstrap forbids it" in wait_for("r1 refuses to bootstrap", refused, 30)
    assert count_events(replica.log_path, "bootstrap_start") == 0
    replica.stop()
    replica.argv.remove("--no-bootstrap")
    cluster.restart(replica)
    wait_for("r1 converged", lambda: converged(primary, replica), 30)
    assert count_events(replica.log_path, "bootstrap_start") == 1


def test_writes_during_a_bootstrap_do_not_make_it_start_over(cluster: Cluster) -> None:
    primary = cluster.primary("primary", *SMALL, "--retention-max-bytes", "64000000")
    write_batches(primary, batches=400, size=250, value_bytes=200)  # about 20 MB to copy
    wait_for("the oldest segments retained away", lambda: wal_start(primary) > 1, 10)
    replica = cluster.replica("r1", primary, "--bootstrap-chunk-bytes", "4096")

    def bootstrapping() -> bool:
        with replica.client() as c:
            return c.status_message().status == pb.STATUS_BOOTSTRAPPING

    wait_for("r1 bootstrapping", bootstrapping, 30)
    replica.signal(signal.SIGSTOP)  # mid-bootstrap: writes and retention go on meanwhile
    try:
        with primary.client() as c:  # 1 MB in small groups, so in many small segments
            for i in range(1500):
                c.put(b"during-%d" % i, b"v" * 700)
        wait_for("the bootstrap's snapshot holds the WAL", lambda: held_by(primary) == "r1", 10)
    finally:
        replica.signal(signal.SIGCONT)
    wait_for("r1 converged", lambda: converged(primary, replica), 60)
    assert count_events(replica.log_path, "bootstrap_start") == 1


def wal_start(primary: Node) -> int:
    with primary.client() as c:
        return int(c.status_message().retained_from_lsn)
