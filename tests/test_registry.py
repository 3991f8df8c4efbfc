"""The primary's replica registry: progress, lag, liveness, identity, retention, waiters."""

from __future__ import annotations

import pytest

from kevo_repl.core.commit_times import CommitTimes
from kevo_repl.core.follower_types import Status
from kevo_repl.core.registry import (
    DuplicateReplicaError,
    ImpossiblePositionError,
    Registry,
    RegistryFullError,
    WaitResult,
)
from kevo_repl.core.throughput import RateWindow

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


def test_write_flush_and_replay_lag_from_the_primarys_commit_times() -> None:
    r = Registry()
    for lsn, t in ((10, 1000), (20, 2000), (30, 3000)):
        r.note_commit(lsn, t)
    join(r, "a", b"pa", applied=0, now=3000)
    a = r.get(b"pa")
    assert a is not None
    # Received everything, applied to 20, durable to 10: each behind position reads as the
    # age of the oldest commit it has not reached; the caught-up one as its measured delay.
    r.ack(b"pa", applied_lsn=20, durable_lsn=10, now_ms=3100, received_lsn=30)
    assert r.lags_s(a, 3100) == pytest.approx((0.1, 1.1, 0.1))
    assert r.lags_s(a, 3400) == pytest.approx((0.1, 1.4, 0.4))  # behind: the age grows
    r.ack(b"pa", 30, 30, 3500, received_lsn=30)
    assert r.lags_s(a, 3500) == pytest.approx((0.1, 0.5, 0.5))
    assert r.lags_s(a, 9000) == pytest.approx((0.1, 0.5, 0.5))  # idle: the last measured
    r.note_commit(40, 10_000)
    assert r.lags_s(a, 10_200) == pytest.approx((0.2, 0.2, 0.2))  # a new commit not reached
    r.ack(b"pa", 40, 40, 10_050, received_lsn=10**9)  # a wild received LSN is clamped
    assert a.received_lsn == 40


def test_a_followers_throughput_over_the_last_ten_seconds() -> None:
    r = Registry()
    join(r, "a", b"pa", applied=0, now=0)
    beat(r, b"pa", Status.SYNCING, 0, 0, 0)
    a = r.get(b"pa")
    assert a is not None
    for second in range(1, 21):  # 100 entries of 1000 record bytes a second
        r.note_commit(second * 100, second * 1000, nbytes=1000)
        r.ack(b"pa", second * 100, second * 100, second * 1000 + 10)
    entries, nbytes = r.rates(a, 20_010)
    assert entries == pytest.approx(100, rel=0.02) and nbytes == pytest.approx(1000, rel=0.02)
    assert r.rates(a, 31_000) == (0.0, 0.0)  # stopped: the window holds no progress


def test_commit_history_is_bounded() -> None:
    r = Registry(commits=CommitTimes(max_entries=100))
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
    assert r.ack(b"pa", 10, 10, 10)[1] == []
    _, done = r.ack(b"pb", 12, 12, 20)
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


def test_waiters_of_different_counts_are_released_in_lsn_order() -> None:
    r = reg()
    for rid in ("a", "b", "c"):
        join(r, rid, rid.encode())
        beat(r, rid.encode(), Status.SYNCING, 0, 0, 0)
    for lsn in range(1, 101):
        assert r.wait_for(("one", lsn), lsn, 1, 1000) is None
        assert r.wait_for(("three", lsn), lsn, 3, 1000) is None
    assert r.wait_for(("one", 7), 7, 1, 1000) is None  # out of commit order: still found
    assert r.waiters == 201
    _, done = r.ack(b"a", 50, 50, 1)
    tokens = [d.token for d in done]
    assert sorted(tokens) == sorted([("one", i) for i in range(1, 51)] + [("one", 7)])  # type: ignore[type-var]
    assert all(d.replicas_applied == 1 and not d.timed_out for d in done)
    _, done = r.ack(b"b", 60, 60, 2)
    assert [d.token for d in done] == [("one", i) for i in range(51, 61)]
    _, done = r.ack(b"c", 40, 40, 3)
    assert [d.token for d in done] == [("three", i) for i in range(1, 41)]
    assert all(d.replicas_applied == 3 for d in done)
    assert r.waiters == 201 - 51 - 10 - 40
    expired = r.tick(1000)[1]
    assert len(expired) == r.waiters + len(expired) and r.waiters == 0
    counts = {d.token: d.replicas_applied for d in expired}
    assert counts[("three", 45)] == 2 and counts[("three", 70)] == 0 and counts[("one", 99)] == 0


def test_finished_waiters_do_not_accumulate() -> None:
    r = Registry(primary_lsn=20_000)
    join(r, "a", b"pa")
    beat(r, b"pa", Status.SYNCING, 0, 0, 0)
    for lsn in range(1, 20_001):
        r.wait_for(lsn, lsn, 1, 60_000)
        if lsn % 100 == 0:
            r.ack(b"pa", lsn, lsn, lsn)
            r.tick(lsn)
    assert r.waiters == 0
    assert len(r.parked._deadlines) < 2000  # released waiters are compacted away, not kept 60 s


def test_impossible_positions_are_refused_and_change_nothing() -> None:
    r = Registry(primary_lsn=100)
    join(r, "a", b"pa", applied=50)
    beat(r, b"pa", Status.SYNCING, 50, 40, 0)
    assert r.wait_for("w", 60, 1, 1000) is None
    for applied, durable in ((10**15, 10**15), (101, 0), (60, 61)):
        with pytest.raises(ImpossiblePositionError):
            r.ack(b"pa", applied, durable, 5)
        with pytest.raises(ImpossiblePositionError):
            r.heartbeat(b"pa", Status.READY, applied, durable, 0.0, "", 5)
    a = r.get(b"pa")
    assert a is not None and (a.applied_lsn, a.durable_lsn, a.status) == (50, 40, Status.SYNCING)
    assert r.waiters == 1
    # A joining replica reports its old store's position: not a claim, not refused.
    r.heartbeat(b"pa", Status.BOOTSTRAPPING, 10**9, 10**9, 0.5, "", 6)
    assert r.replicas_applied(60) == 0


def test_the_number_of_replicas_is_capped() -> None:
    r = Registry(max_replicas=3)
    for i in range(3):
        join(r, f"r{i}", b"p%d" % i)
    with pytest.raises(RegistryFullError):
        join(r, "r3", b"p3")
    join(r, "r0", b"p0")  # re-registering a known one is fine
    join(r, "r9", b"p1")  # so is a known peer taking another id (it drops its old one)
    assert sorted(x.replica_id for x in r.replicas()) == ["r0", "r2", "r9"]


def test_a_write_counts_a_replica_only_once_it_is_on_its_disk() -> None:
    r = reg()
    join(r, "a", b"pa")
    beat(r, b"pa", Status.SYNCING, 0, 0, 0)
    assert r.wait_for("w", 10, 1, 1000) is None
    assert r.ack(b"pa", 10, 5, 1)[1] == []  # applied, not yet durable: it could lose it
    assert r.ack(b"pa", 10, 10, 2)[1] == [WaitResult("w", 1, timed_out=False)]


def test_a_burst_inside_one_step_counts_in_full_then_leaves_the_window() -> None:
    w = RateWindow.starting(0, 0, 0)
    w.note(5, 1000, 50_000)  # within the first step: not a sample, the totals are passed in
    assert w.rates(2_000, 1000, 50_000) == (500.0, 25_000.0)  # over the 2 s since the start
    w.note(2_000, 1000, 50_000)
    assert w.rates(10_000, 1000, 50_000) == (100.0, 5_000.0)  # the full 10 s window
    assert w.rates(12_500, 1000, 50_000) == (0.0, 0.0)  # no growth since the window began
