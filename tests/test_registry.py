"""The primary's replica registry: progress, lag, liveness, identity, retention, waiters."""

from __future__ import annotations

import pytest

from kevo_repl.core.follower_types import Status
from kevo_repl.core.registry import DuplicateReplicaError, Registry, WaitResult

ROLE_REPLICA = 2


def reg() -> Registry:
    return Registry(stale_after_ms=1500, primary_lsn=1000)  # positions up to 1000 are real


def join(
    r: Registry, rid: str, peer: bytes, applied: int = 0, now: int = 0, addr: str = ""
) -> None:
    r.register(rid, peer, addr or f"{rid}:7000", ROLE_REPLICA, applied, now)


def beat(r: Registry, peer: bytes, status: Status, applied: int, durable: int, now: int) -> None:
    r.heartbeat(peer, status, applied, durable, 0.0, "", now)


# ---- lag ----------------------------------------------------------------------------------


def test_lag_in_entries_and_in_ms_from_commit_times() -> None:
    r = reg()
    for lsn, t in ((10, 1000), (20, 1500), (30, 2000)):
        r.note_commit(lsn, t)
    join(r, "a", b"pa", applied=15, now=2000)
    a = r.get(b"pa")
    assert a is not None
    assert r.lag_entries(a) == 15
    assert r.lag_ms(a, now_ms=2500) == 1000  # oldest unapplied commit (20) is 1000 ms old
    r.ack(b"pa", 30, 30, 2600)
    assert r.lag_entries(a) == 0 and r.lag_ms(a, 2600) == 0
    r.ack(b"pa", 0, 0, 2700)
    assert r.lag_ms(a, 2700) == 1700


def test_commit_history_is_bounded() -> None:
    r = Registry(commit_history_max=100)
    for lsn in range(1, 1001):
        r.note_commit(lsn, lsn)
    join(r, "a", b"pa", applied=999, now=1000)
    a = r.get(b"pa")
    assert a is not None and r.lag_ms(a, 1010) == 10


# ---- liveness and identity ------------------------------------------------------------------


def test_silent_replica_goes_disconnected_once_then_revives() -> None:
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.READY, 0, 0, 100)
    assert r.tick(1600) == ([], [])
    stale, _ = r.tick(1601)
    assert [s.replica_id for s in stale] == ["a"] and r.replicas()[0].status == Status.DISCONNECTED
    assert r.tick(3000) == ([], [])  # reported once
    beat(r, b"pa", Status.READY, 0, 0, 3100)
    assert r.replicas()[0].status == Status.READY


def test_long_gone_replica_is_forgotten() -> None:
    r = Registry(stale_after_ms=10, forget_after_ms=100)
    join(r, "a", b"pa")
    r.tick(101)
    assert r.replicas() == [] and r.get(b"pa") is None


def test_unknown_peer_must_register() -> None:
    r = reg()
    assert r.heartbeat(b"nobody", Status.READY, 1, 1, 0.0, "", 0) == (None, [])
    assert r.ack(b"nobody", 1, 1, 0) == (None, [])


def test_ack_revives_a_disconnected_replica() -> None:
    r = reg()
    r.note_commit(10, 0)
    join(r, "a", b"pa")
    r.tick(2000)
    r.ack(b"pa", 4, 4, 2100)
    assert r.replicas()[0].status == Status.SYNCING
    r.tick(4000)
    r.ack(b"pa", 10, 10, 4100)
    assert r.replicas()[0].status == Status.READY


def test_duplicate_id_from_another_address_is_refused_while_live() -> None:
    r = reg()
    join(r, "a", b"p1", now=0, addr="host1:7000")
    with pytest.raises(DuplicateReplicaError):
        join(r, "a", b"p2", now=1000, addr="host2:7000")
    join(r, "a", b"p2", now=2000, addr="host2:7000")  # the holder went stale: take over
    assert r.get(b"p1") is None and r.get(b"p2") is not None


def test_same_replica_reconnecting_with_a_new_socket_takes_over() -> None:
    r = reg()
    join(r, "a", b"p1", applied=5, addr="host1:7000")
    r.note_catchup(b"p1", 10)
    join(r, "a", b"p2", applied=7, now=20, addr="host1:7000")
    assert r.get(b"p1") is None
    state = r.get(b"p2")
    assert state is not None and state.applied_lsn == 7 and state.catchups == 1
    assert len(r.replicas()) == 1


# ---- retention ----------------------------------------------------------------------------


def test_retention_floor_follows_the_slowest_durable_position() -> None:
    r = reg()
    assert r.retention_floor() is None
    join(r, "a", b"pa")
    join(r, "b", b"pb")
    beat(r, b"pa", Status.READY, 50, 40, 10)
    beat(r, b"pb", Status.READY, 30, 20, 10)
    assert r.retention_floor() == 21


def test_retention_floor_keeps_what_a_restart_needs_not_what_is_applied() -> None:
    """Regression: a floor at applied+1 dropped the WAL a replica needs after a power loss."""
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.READY, 100, 60, 10)  # applied 100, synced only 60
    assert r.retention_floor() == 61


def test_bootstrap_pins_the_wal_at_its_snapshot_until_it_reports_progress() -> None:
    r = reg()
    join(r, "a", b"pa")
    r.note_bootstrap(b"pa", snapshot_lsn=500, now_ms=10)
    beat(r, b"pa", Status.BOOTSTRAPPING, 0, 0, 20)
    assert r.retention_floor() == 501
    beat(r, b"pa", Status.SYNCING, 500, 500, 30)  # installed: the pin is gone
    assert r.retention_floor() == 501
    beat(r, b"pa", Status.READY, 700, 650, 40)
    assert r.retention_floor() == 651


def test_disconnected_replica_keeps_its_floor() -> None:
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.READY, 10, 10, 0)
    r.tick(5000)
    assert r.replicas()[0].status == Status.DISCONNECTED and r.retention_floor() == 11


# ---- waiting for replicas -----------------------------------------------------------------


def test_wait_satisfied_at_once_when_enough_replicas_have_it() -> None:
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.READY, 10, 10, 0)
    assert r.wait_for("w", 10, 1, 1000) == WaitResult("w", 1, timed_out=False)


def test_wait_released_by_acks() -> None:
    r = reg()
    join(r, "a", b"pa")
    join(r, "b", b"pb")
    beat(r, b"pa", Status.SYNCING, 0, 0, 0)
    beat(r, b"pb", Status.SYNCING, 0, 0, 0)
    assert r.wait_for("w", 10, 2, 1000) is None
    assert r.ack(b"pa", 10, 0, 10)[1] == []
    _, done = r.ack(b"pb", 12, 0, 20)
    assert done == [WaitResult("w", 2, timed_out=False)]


def test_wait_expires_with_the_count_it_got() -> None:
    r = reg()
    join(r, "a", b"pa")
    join(r, "b", b"pb")
    beat(r, b"pa", Status.READY, 0, 0, 0)
    assert r.wait_for("w", 10, 2, 500) is None
    r.ack(b"pa", 10, 10, 100)
    assert r.tick(499)[1] == []
    assert r.tick(500)[1] == [WaitResult("w", 1, timed_out=True)]
    assert r.tick(600)[1] == []


def test_disconnected_replicas_do_not_count() -> None:
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.READY, 10, 10, 0)
    r.tick(2000)
    assert r.replicas_applied(10) == 0


def test_bootstrapping_replica_does_not_count_its_old_lsn() -> None:
    """Regression: a replica bootstrapping away from another history reports that history's
    LSN; counting it reported writes of the new history as replicated."""
    r = reg()
    join(r, "a", b"pa", applied=0)
    r.note_bootstrap(b"pa", 5, 0)
    beat(r, b"pa", Status.BOOTSTRAPPING, 900, 900, 10)
    assert r.replicas_applied(5) == 0
    assert r.wait_for("w", 5, 1, 100) is None
    _, done = r.heartbeat(b"pa", Status.SYNCING, 5, 5, 0.0, "", 50)
    assert done == [WaitResult("w", 1, timed_out=False)]
