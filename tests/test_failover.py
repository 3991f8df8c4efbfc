"""Every node keeps the log: cascading, promotion, repoint, rejoin and switchover, CLI-driven.

Real processes on loopback, the hot-key load of ``tests/faults/load.py``. The counts that
must be exact: bootstraps (0 whenever the logs cover the change), acknowledged writes lost
(0 for those acknowledged with ``wait_replicas=1`` and for a planned switchover).
"""

from __future__ import annotations

import json
from pathlib import Path

from kevo_repl.client import Client, RemoteError
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.faults.checkers import count_events, verify_acked
from tests.faults.load import Writer
from tests.nodes import Cluster, Node, converged, wait_for
from tests.test_replication_e2e import write_batches


def status(node: Node) -> dict[str, object]:
    out = kevo("status", "--node", node.address, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def bootstraps(node: Node) -> int:
    return count_events(node.log_path, "bootstrap_start")


def test_a_chain_of_replicas_under_load_is_digest_equal(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    r2 = cluster.replica("r2", r1)
    r3 = cluster.replica("r3", r2)
    writer = Writer(primary.address, max_writes=3000, max_seconds=60)
    writer.start()
    with Client(r3.address) as c:  # sent to the last of the chain: redirected
        for i in range(20):
            c.batch([(b"chain-%d-%d" % (i, j), b"v") for j in range(100)])
    writer.join(60)
    assert not writer.errors and writer.acked.refused == 0
    wait_for("the chain converged", lambda: converged(primary, r1, r2, r3), 60)
    for node in (r1, r2, r3):
        verify_acked(node, writer.acked.expected())
        assert bootstraps(node) == 0
    doc = status(r2)
    assert doc["upstream"] == r1.address and doc["primary"] == primary.address
    assert doc["bootstraps"] == 0 and isinstance(doc["catchups"], int)
    followers = status(r1)["replicas"]
    assert isinstance(followers, list) and [f["id"] for f in followers] == ["r2"]


def test_failover_promotes_repoints_and_the_old_primary_rejoins_by_rewind(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    r2 = cluster.replica("r2", primary)
    r3 = cluster.replica("r3", r2)
    with Client(primary.address, timeout_ms=5000) as c:  # survives: every replica holds it
        kept = [
            c.put(b"kept-%d" % i, b"v%d" % i, wait_replicas=2, timeout_ms=5000) for i in range(50)
        ]
    assert all(w.replicas_applied == 2 and not w.wait_timed_out for w in kept)
    wait_for("replicas caught up", lambda: converged(primary, r1, r2, r3), 30)
    for r in (r1, r2, r3):
        assert r.stop() == 0
    with Client(primary.address) as c:  # a tail only the old primary has: lost by failover
        tail = [c.put(b"tail-%d" % i, b"lost").lsn for i in range(7)]
    primary.kill()
    for r in (r1, r2, r3):
        cluster.restart(r)
    out = kevo("promote", "--node", r1.address, "--force", "--json")
    assert out.returncode == 0, out.stderr
    promoted = json.loads(out.stdout)
    assert promoted["fork_lsn"] == tail[0] - 1 and len(promoted["history"]) == 2
    out = kevo("repoint", "--node", r2.address, "--primary", r1.address)
    assert out.returncode == 0, out.stderr
    writer = Writer(r1.address, prefix="after", max_writes=500, max_seconds=60)
    writer.start()
    primary.argv[primary.argv.index("primary")] = "replica"
    primary.argv += ["--primary", r1.address, "--id", "old-primary"]
    cluster.restart(primary)
    writer.join(60)
    assert not writer.errors and writer.acked.refused == 0
    wait_for("all converged", lambda: converged(r1, r2, r3, primary), 60)
    for node in (r2, r3, primary):
        assert bootstraps(node) == 0, node.name
    assert count_events(primary.log_path, "rewind_start") == 1
    discarded = list((tmp_path / "primary" / "discarded").glob("*.json"))
    assert len(discarded) == 1
    summary = json.loads(discarded[0].read_text())
    assert (summary["from_lsn"], summary["entries"]) == (tail[0], len(tail))
    with Client(primary.address) as c:
        assert c.get(b"tail-0") is None  # rewound away
        assert c.get(b"kept-49") == b"v49"
    verify_acked(primary, writer.acked.expected())
    doc = status(r3)
    assert doc["primary"] == r1.address and doc["bootstraps"] == 0


def test_a_primary_whose_whole_history_was_lost_rejoins_by_rewind(cluster: Cluster) -> None:
    """Found by the failover simulation (seed 784): promoted before it held a record, r1
    forks at LSN 0; the old primary's whole WAL is its tail, rewound, never bootstrapped."""
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    wait_for("r1 registered", lambda: status(r1)["status"] == "ready", 30)
    assert r1.stop() == 0
    with Client(primary.address) as c:
        c.batch([(b"only-old-%d" % i, b"lost") for i in range(30)])
    primary.kill()
    cluster.restart(r1)
    out = kevo("promote", "--node", r1.address, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["fork_lsn"] == 0, out.stderr
    with Client(r1.address) as c:
        c.put(b"new", b"1")
    primary.argv[primary.argv.index("primary")] = "replica"
    primary.argv += ["--primary", r1.address, "--id", "old-primary"]
    cluster.restart(primary)
    wait_for("converged", lambda: converged(r1, primary), 60)
    assert bootstraps(primary) == 0 and count_events(primary.log_path, "rewind_start") == 1
    with Client(primary.address) as c:
        assert c.get(b"only-old-0") is None and c.get(b"new") == b"1"


def test_promote_refuses_while_the_upstream_answers(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    wait_for("r1 ready", lambda: status(r1)["status"] == "ready", 30)
    out = kevo("promote", "--node", r1.address)
    assert out.returncode == 1 and "reachable and answering" in out.stderr, out.stderr
    assert status(r1)["role"] == "replica"


def test_promote_refuses_a_replica_that_never_followed_a_history(cluster: Cluster) -> None:
    """Found by the failover simulation (seed 784): a replica promoted before it ever reached
    its primary starts a root history that no node holding data can follow."""
    primary = cluster.primary()
    primary.stop()
    lonely = cluster.replica("lonely", primary)  # its primary is gone: it never registers
    out = kevo("promote", "--node", lonely.address)
    assert out.returncode == 1 and "never followed a history" in out.stderr, out.stderr
    assert status(lonely)["role"] == "replica"
    out = kevo("promote", "--node", lonely.address, "--force")  # an empty database, asked for
    assert out.returncode == 0 and status(lonely)["role"] == "primary", out.stderr


def test_repoint_refuses_a_cycle(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    r2 = cluster.replica("r2", r1)
    out = kevo("repoint", "--node", r1.address, "--primary", r2.address)
    assert out.returncode == 1 and "that node follows it" in out.stderr, out.stderr
    assert status(r1)["upstream"] == primary.address


def test_switchover_under_load_loses_nothing_and_bootstraps_nothing(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    r2 = cluster.replica("r2", primary)
    where = [primary.address]
    writer = Writer(lambda: where[0], max_writes=6000, max_seconds=60)
    writer.start()
    wait_for("load running", lambda: len(writer.acked) > 500, 30)
    out = kevo("switchover", "--node", primary.address, "--to", r1.address)
    assert out.returncode == 0, out.stderr
    where[0] = r1.address
    out = kevo("repoint", "--node", r2.address, "--primary", r1.address)
    assert out.returncode == 0, out.stderr
    mark = len(writer.acked)
    wait_for("writes go on through the new primary", lambda: len(writer.acked) > mark + 500, 30)
    writer.stop()
    assert not writer.errors
    wait_for("all converged", lambda: converged(r1, primary, r2), 60)
    for node in (r1, primary, r2):
        verify_acked(node, writer.acked.expected())
        assert bootstraps(node) == 0, node.name
    assert status(primary)["upstream"] == r1.address
    assert status(r1)["role"] == "primary"


def test_a_retained_away_follower_of_a_replica_bootstraps_once_from_it(cluster: Cluster) -> None:
    primary = cluster.primary()
    small = ["--retention-bytes", "131072", "--segment-bytes", "65536"]
    r1 = cluster.replica("r1", primary, *small, "--retention-max-bytes", "300000")
    r2 = cluster.replica("r2", r1)
    write_batches(primary, batches=5, size=100, value_bytes=200)
    wait_for("r2 caught up", lambda: converged(primary, r1, r2), 30)
    r2.stop()
    write_batches(primary, batches=40, size=100, prefix="while-down", value_bytes=200)
    wait_for(
        "r1's cap passed r2",
        lambda: count_events(r1.log_path, "wal_cap_passed_replicas") >= 1,
        30,
    )
    cluster.restart(r2)
    wait_for("r2 converged", lambda: converged(primary, r1, r2), 60)
    assert bootstraps(r2) == 1
    assert count_events(r1.log_path, "bootstrap_serving") == 1
    assert count_events(primary.log_path, "bootstrap_serving") == 0


def test_writes_to_a_fenced_primary_are_refused_naming_the_new_one(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    r2 = cluster.replica("r2", primary)
    wait_for("replicas caught up", lambda: converged(primary, r1, r2), 30)
    assert kevo("promote", "--node", r1.address, "--force").returncode == 0
    assert kevo("repoint", "--node", r2.address, "--primary", r1.address).returncode == 0
    # The old primary is alive and was never told: r2's history tells it once r2 registers.
    assert kevo("repoint", "--node", r2.address, "--primary", primary.address).returncode == 0
    wait_for("the old primary fenced", lambda: status(primary).get("fenced"), 30)
    with Client(primary.address, follow_redirects=False) as c:
        try:
            c.put(b"k", b"v")
        except RemoteError as exc:
            assert exc.code == pb.ERROR_NOT_PRIMARY and exc.primary == r1.address
        else:
            raise AssertionError("a fenced primary took a write")
    out = kevo("put", "--node", primary.address, "k", "v")  # the client follows the redirect
    assert out.returncode == 0, out.stderr
    with Client(r1.address) as c:
        assert c.get(b"k") == b"v"


def test_a_replica_directory_is_refused_as_a_primary_until_it_owns_a_history(
    cluster: Cluster,
) -> None:
    """``primary --data`` on a replica's copy of a history would be a second primary of that
    same history (its followers could not tell the two apart): refused, naming why; the
    same directory once promoted (a history of its own) restarts as a primary."""
    primary = cluster.primary()
    r1 = cluster.replica("r1", primary)
    write_batches(primary, batches=3, size=50, prefix="a")
    wait_for("r1 caught up", lambda: converged(primary, r1))
    assert r1.stop() == 0
    data = cluster.root / "r1"
    out = kevo("primary", "--data", str(data), "--port", str(r1.port), timeout=30)
    assert out.returncode == 1, out.stderr
    assert "second primary of the same history" in out.stderr, out.stderr
    cluster.restart(r1)  # still fine as a replica
    assert primary.stop() == 0
    assert kevo("promote", "--node", r1.address, "--force").returncode == 0  # it just stopped
    assert r1.stop() == 0
    promoted = cluster.primary("r1", port=r1.port)  # the same directory, as a primary now
    with promoted.client() as c:
        assert c.status().role == "primary"
