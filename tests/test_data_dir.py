"""The data directory: one node at a time, and a store checked after every unclean stop.

Before: a second ``primary --data DIR`` on a running primary's directory started and served
(both handed out LSNs 1-3), and a store damaged by a power loss was served as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kevo_repl.adapters.state_check import check_store
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.faults.power import damage_store
from tests.nodes import Cluster, Node, converged, wait_for
from tests.test_replication_e2e import write_batches


def damage(store: Path) -> None:
    damage_store(store, seed=3)  # asserts the check sees it: a precondition, not the test


def test_a_second_node_on_a_used_data_dir_is_refused_naming_the_holder(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    assert primary.proc is not None
    data = tmp_path / "primary"
    for argv in (
        ["primary", "--data", str(data), "--port", "1"],
        ["replica", "--data", str(data), "--primary", primary.address, "--port", "3"],
    ):
        out = kevo(*argv, timeout=30)
        assert out.returncode == 1, out
        assert f"is in use by PID {primary.proc.pid} (primary" in out.stderr, out.stderr
    with primary.client() as c:
        assert c.put(b"k", b"v").lsn == 1  # the holder never noticed


def test_the_store_is_checked_after_an_unclean_stop_only(cluster: Cluster) -> None:
    primary = cluster.primary()
    write_batches(primary, batches=2, size=10)
    assert primary.stop() == 0
    cluster.restart(primary)
    assert count_events(primary.log_path, "store_checked") == 0  # a clean stop
    primary.kill()
    cluster.restart(primary)
    assert count_events(primary.log_path, "store_checked") == 1


def test_a_primary_rebuilds_a_damaged_store_from_its_wal(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    write_batches(primary, batches=20, size=200)
    before = primary.digest()
    primary.kill()
    store = tmp_path / "primary" / "state.mdb"
    damage(store)
    cluster.restart(primary)
    assert count_events(primary.log_path, "store_damaged") == 1
    assert primary.digest() == before  # replayed from LSN 1: every batch, in order
    moved = [p for p in store.parent.glob("state.mdb.damaged-*") if not p.name.endswith("-lock")]
    assert len(moved) == 1 and not check_store(moved[0]).ok  # kept for the operator


def test_a_primary_that_cannot_rebuild_refuses_and_changes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary("primary", "--retention-bytes", "100000", "--segment-bytes", "65536")
    write_batches(primary, batches=40, size=100, value_bytes=200)
    wait_for("retention dropped the oldest segments", lambda: wal_start(primary) > 1, 30)
    primary.kill()
    store = tmp_path / "primary" / "state.mdb"
    damage(store)
    damaged = hashlib.sha256(store.read_bytes()).hexdigest()
    assert primary.proc is not None
    primary.start()
    assert primary.proc.wait(60) == 1
    log = primary.log_path.read_text()
    assert "cannot be rebuilt from it here. Nothing was changed" in log
    assert "--reinit" in log
    assert hashlib.sha256(store.read_bytes()).hexdigest() == damaged
    assert not list(store.parent.glob("state.mdb.damaged-*"))


def test_a_replica_with_a_damaged_store_starts_empty_and_converges(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    write_batches(primary, batches=10, size=100)
    wait_for("replica caught up", lambda: converged(primary, replica), 30)
    replica.kill()
    damage(tmp_path / "r1" / "state.mdb")
    write_batches(primary, batches=5, size=100, prefix="later")
    cluster.restart(replica)
    assert count_events(replica.log_path, "store_damaged") == 1
    wait_for("replica converged again", lambda: converged(primary, replica), 60)


def wal_start(node: Node) -> int:
    with node.client() as c:
        return int(c.status_message().retained_from_lsn)


def test_a_failed_start_leaves_nothing_it_created(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    taken = primary.address.rsplit(":", 1)[1]  # its PUB port: our bind fails there
    new = tmp_path / "new"
    out = kevo("primary", "--data", str(new), "--port", taken, timeout=30)
    assert out.returncode == 1 and "cannot bind" in out.stderr, out.stderr
    assert not new.exists()  # a directory the start created goes with it

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for cmd in (
        ["primary", "--data", str(kept), "--port", taken],
        ["replica", "--data", str(kept), "--port", taken, "--primary", primary.address],
    ):
        out = kevo(*cmd, timeout=30)
        assert out.returncode == 1 and "cannot bind" in out.stderr, out.stderr
        assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]

    # A directory that already was a node's keeps all of it; a locked one is not touched.
    data = tmp_path / "primary"
    before = sorted(p.name for p in data.iterdir())
    out = kevo("primary", "--data", str(data), "--port", taken, timeout=30)
    assert out.returncode == 1 and "is in use by PID" in out.stderr, out.stderr
    assert sorted(p.name for p in data.iterdir()) == before
    with primary.client() as c:
        assert c.put(b"k", b"v").lsn == 1
