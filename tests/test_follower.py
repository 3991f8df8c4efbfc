"""The follower state machine, one decision at a time: events in, actions out."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import (
    TRANSITIONS,
    ApplyRecord,
    BeginBootstrap,
    DiscardTail,
    FollowerConfig,
    InstallBootstrap,
    Reconnect,
    RewindStore,
    SaveChain,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendRewind,
    SendWalSync,
    Status,
    WriteChunk,
)
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.stream_ahead import StreamAhead

H = b"H" * 16  # the primary's history
OTHER = b"O" * 16
CHAIN = HistoryChain.root(H)
MAX = 4096


BASE = FollowerConfig(
    replica_id="r1",
    heartbeat_interval_ms=100,
    primary_timeout_ms=1000,
    request_timeout_ms=500,
    backoff_initial_ms=100,
    backoff_max_ms=800,
    wal_sync_max_bytes=MAX,
    bootstrap_credit=4,
    bootstrap_chunk_bytes=64,
)


def sr(applied: int, history: bytes, chain: HistoryChain | None = None) -> SendRegister:
    """The Register a follower at ``(applied, history)`` sends, with its chain of one."""
    if chain is None:
        chain = HistoryChain.root(history) if history else HistoryChain()
    return SendRegister(applied, history, chain)


def make(
    applied_lsn: int = 0,
    history_id: bytes = b"",
    chain: HistoryChain | None = None,
    **config: Any,
) -> Follower:
    cfg = dataclasses.replace(BASE, **config)
    f = Follower(cfg, applied_lsn=applied_lsn, history_id=history_id)
    if chain is not None:
        f.chain = chain
    return f


def status(f: Follower) -> Status:
    """Read through a call: mypy would otherwise narrow ``f.status`` across method calls."""
    return f.status


def ready(applied: int = 5) -> Follower:
    """A follower that registered and is READY at ``applied``."""
    f = make(applied_lsn=applied, history_id=H)
    f.start(0)
    assert f.on_register_reply(applied, 1, H, False) == []
    assert status(f) == Status.READY
    return f


def syncing(applied: int = 5, primary_lsn: int = 10) -> Follower:
    """A follower SYNCING with a WalSync from ``applied + 1`` in flight."""
    f = make(applied_lsn=applied, history_id=H)
    f.start(0)
    assert f.on_register_reply(primary_lsn, 1, H, False) == [SendWalSync(applied + 1, MAX)]
    return f


def rec(first: int, last: int, history: bytes = H) -> tuple[int, int, bytes, bytes]:
    return first, last, history, b"%d-%d" % (first, last)


# ---- joining ------------------------------------------------------------------------------


def test_empty_replica_registers_then_catches_up_from_lsn_1() -> None:
    f = make()
    assert f.start(0) == [sr(0, b"")]
    assert status(f) == Status.CONNECTING
    assert f.on_register_reply(5, 1, H, False) == [SaveChain(CHAIN), SendWalSync(1, MAX)]
    assert status(f) == Status.SYNCING and f.history_id == b""  # the store has none yet
    out = f.on_wal_sync_reply([rec(1, 2), rec(3, 5)], primary_lsn=5)
    assert out == [ApplyRecord(1, 2, b"1-2"), ApplyRecord(3, 5, b"3-5")]
    assert status(f) == Status.READY and f.applied_lsn == 5 and f.history_id == H
    assert f.take_ack() == [SendAck(5, 0)]
    assert f.take_ack() == []  # coalesced: one ack per batch of applies


def test_catch_up_takes_several_wal_syncs_until_the_primary_lsn() -> None:
    f = syncing(applied=0, primary_lsn=9)
    assert f.on_wal_sync_reply([rec(1, 4)], primary_lsn=9) == [
        ApplyRecord(1, 4, b"1-4"),
        SendWalSync(5, MAX),
    ]
    assert status(f) == Status.SYNCING
    f.on_wal_sync_reply([rec(5, 9)], primary_lsn=9)
    assert status(f) == Status.READY


def test_replica_at_the_primary_lsn_is_ready_at_once() -> None:
    f = make(applied_lsn=7, history_id=H)
    f.start(0)
    assert f.on_register_reply(7, 1, H, False) == []
    assert status(f) == Status.READY


def test_wal_too_old_at_register_means_bootstrap() -> None:
    f = make(applied_lsn=3, history_id=H)
    f.start(0)
    # the primary's flag is not even needed: applied + 1 < retained_from is checked here too
    assert f.on_register_reply(50, 10, H, False) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]
    assert status(f) == Status.BOOTSTRAPPING


def test_too_old_reply_to_wal_sync_means_bootstrap() -> None:
    f = syncing(applied=5)
    assert f.on_too_old(retained_from_lsn=20) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]
    assert status(f) == Status.BOOTSTRAPPING and f.counters.bootstraps == 1


def test_history_mismatch_means_bootstrap_with_reinit() -> None:
    f = make(applied_lsn=40, history_id=OTHER, allow_unrelated_history=True)
    f.start(0)
    assert f.on_register_reply(10, 1, H, True) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]
    assert status(f) == Status.BOOTSTRAPPING


def test_a_replica_holding_data_refuses_an_unrelated_primary() -> None:
    """Regression: a primary restarted on an empty data dir wiped every replica silently."""
    f = make(applied_lsn=40, history_id=OTHER)
    f.start(0)
    assert f.on_register_reply(10, 1, H, True) == []
    assert status(f) == Status.ERROR and f.history_id == OTHER and f.applied_lsn == 40
    assert "unrelated to ours" in f.error_message and "--reinit" in f.error_message
    assert f.on_beacon(H, 12) == []  # the same wrong primary: nothing changes
    assert [type(a) for a in f.tick(5000)] == [SendHeartbeat]  # reports why, never bootstraps
    assert f.on_beacon(OTHER, 40) == [sr(40, OTHER)]  # our primary is back: look
    assert status(f) == Status.CONNECTING


def test_an_empty_replica_follows_any_primary() -> None:
    f = make()
    f.start(0)
    assert f.on_register_reply(10, 5, H, True) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]


def test_history_mismatch_without_bootstrap_allowed_is_an_error_that_stays() -> None:
    f = make(applied_lsn=40, history_id=OTHER, allow_bootstrap=False, allow_unrelated_history=True)
    f.start(0)
    assert f.on_register_reply(10, 1, H, True) == []
    assert status(f) == Status.ERROR and "--no-bootstrap forbids it" in f.error_message
    out = f.tick(5000)
    assert [type(a) for a in out] == [SendHeartbeat]  # reports its error, never retries alone
    assert status(f) == Status.ERROR and f.history_id == OTHER


def test_no_bootstrap_is_honoured_when_the_wal_is_too_old() -> None:
    f = make(applied_lsn=5, history_id=H, allow_bootstrap=False)
    f.start(0)
    assert f.on_register_reply(100, 50, H, True) == []
    assert status(f) == Status.ERROR and "WAL too old" in f.error_message
    g = make(applied_lsn=5, history_id=H, allow_bootstrap=False)
    g.start(0)
    assert g.on_register_reply(100, 1, H, False) == [SendWalSync(6, MAX)]
    assert g.on_too_old(50) == []  # retained away while syncing: refused, data kept
    assert status(g) == Status.ERROR and g.applied_lsn == 5 and g.counters.bootstraps == 0


def test_stale_register_reply_is_ignored() -> None:
    f = ready()
    assert f.on_register_reply(99, 1, H, True) == []
    assert status(f) == Status.READY


# ---- the one rule for records -------------------------------------------------------------


def test_gap_in_the_stream_moves_to_syncing_and_asks_once() -> None:
    f = ready(applied=5)
    assert f.on_record(*rec(8, 9)) == [SendWalSync(6, MAX, to_lsn=7)]  # the hole alone
    assert status(f) == Status.SYNCING and f.counters.gaps == 1
    assert f.on_record(*rec(10, 10)) == []  # a WalSync is in flight: no second request


def test_stream_records_past_a_gap_apply_once_the_gap_is_filled() -> None:
    f = ready(applied=5)
    f.on_record(*rec(8, 9))
    f.on_record(*rec(10, 10))
    out = f.on_wal_sync_reply([rec(6, 7)], primary_lsn=10)
    assert out == [
        ApplyRecord(6, 7, b"6-7"),
        ApplyRecord(8, 9, b"8-9"),
        ApplyRecord(10, 10, b"10-10"),
    ]
    assert status(f) == Status.READY and f.applied_lsn == 10


def test_a_reply_past_to_lsn_still_applies_each_record_once() -> None:
    # An upstream that does not know to_lsn sends the held records too: duplicates, dropped.
    f = ready(applied=5)
    f.on_record(*rec(8, 9))
    out = f.on_wal_sync_reply([rec(6, 7), rec(8, 9), rec(10, 12)], primary_lsn=12)
    assert out == [
        ApplyRecord(6, 7, b"6-7"),
        ApplyRecord(8, 9, b"8-9"),
        ApplyRecord(10, 12, b"10-12"),
    ]
    assert f.applied_lsn == 12 and f.counters.dropped_duplicates == 1


def test_a_second_hole_past_held_records_is_asked_for_alone() -> None:
    f = ready(applied=5)
    f.on_record(*rec(8, 9))  # hole 6..7
    f.on_record(*rec(12, 12))  # hole 10..11, behind the first
    out = f.on_wal_sync_reply([rec(6, 7)], primary_lsn=12)
    assert out == [ApplyRecord(6, 7, b"6-7"), ApplyRecord(8, 9, b"8-9"), SendWalSync(10, MAX, 11)]
    assert f.on_wal_sync_reply([rec(10, 11)], primary_lsn=12) == [
        ApplyRecord(10, 11, b"10-11"),
        ApplyRecord(12, 12, b"12-12"),
    ]


def test_while_the_stream_flows_a_reply_short_of_the_upstream_asks_no_more() -> None:
    # The rest is in flight on the stream (a saturated link): fetching it would send it twice.
    f = ready(applied=5)
    f.on_record(*rec(8, 9))  # hole 6..7
    f.on_record(*rec(10, 10))
    out = f.on_wal_sync_reply([rec(6, 7)], primary_lsn=20)  # the upstream is at 20 already
    assert out == [
        ApplyRecord(6, 7, b"6-7"),
        ApplyRecord(8, 9, b"8-9"),
        ApplyRecord(10, 10, b"10-10"),
    ]
    assert status(f) == Status.SYNCING and f.pending_request == ""
    assert f.on_record(*rec(11, 20)) == [ApplyRecord(11, 20, b"11-20")]
    assert status(f) == Status.READY  # the stream itself brought it to the upstream's LSN


def test_a_quiet_stream_leaves_catch_up_to_walsync() -> None:
    f = ready(applied=5)
    f.on_beacon(H, 20)  # a gap a beacon shows: nothing came on the stream meanwhile
    assert f.on_wal_sync_reply([rec(6, 9)], primary_lsn=20) == [
        ApplyRecord(6, 9, b"6-9"),
        SendWalSync(10, MAX),
    ]


def test_held_records_go_with_a_reconnect() -> None:
    f = ready(applied=5)
    f.on_record(*rec(8, 9))
    f.on_record(*rec(10, 10, OTHER))  # the upstream changed history: register again
    assert status(f) == Status.CONNECTING and len(f._ahead) == 0


def test_held_bytes_are_bounded() -> None:
    ahead = StreamAhead(max_bytes=10)
    assert ahead.keep(8, 9, H, b"x" * 6)
    assert not ahead.keep(10, 10, H, b"y" * 6)  # over the bound: fetched later instead
    assert not ahead.keep(8, 9, H, b"x" * 6)  # held already
    assert ahead.held_bytes == 6 and ahead.end_of_gap(5) == 7
    ahead.prune(9)
    assert len(ahead) == 0 and ahead.held_bytes == 0 and ahead.end_of_gap(9) == 0


def test_next_record_applies_and_old_ones_are_dropped() -> None:
    f = ready(applied=5)
    assert f.on_record(*rec(6, 8)) == [ApplyRecord(6, 8, b"6-8")]
    assert f.on_record(*rec(6, 8)) == []
    assert f.on_record(*rec(2, 4)) == []
    assert f.counters.dropped_duplicates == 2 and f.applied_lsn == 8


def test_record_straddling_the_applied_lsn_is_refused_not_fatal() -> None:
    # Remote input (a forged record, or a primary that lost an unsynced tail): the replica
    # never applies it and never crashes on it; it disconnects and registers again later.
    f = ready(applied=5)
    out = f.on_record(*rec(4, 7))
    assert out == [Reconnect("record 4..7 straddles applied 5")]
    assert status(f) == Status.DISCONNECTED and f.applied_lsn == 5


def test_record_of_another_history_is_never_applied() -> None:
    f = ready(applied=5)
    out = f.on_record(*rec(6, 6, OTHER))
    assert out == [Reconnect("stream of another history"), sr(5, H)]
    assert status(f) == Status.CONNECTING and f.applied_lsn == 5


def test_records_before_registration_are_left_for_catch_up() -> None:
    f = make()
    f.start(0)
    assert f.on_record(*rec(1, 1)) == []
    assert f.applied_lsn == 0


def test_beacon_reveals_a_lost_tail() -> None:
    f = ready(applied=5)
    assert f.on_beacon(H, 5) == []
    assert f.on_beacon(H, 7) == [SendWalSync(6, MAX)]
    assert status(f) == Status.SYNCING


def test_dead_stream_with_live_replies_still_catches_up() -> None:
    f = ready(5)
    f.tick(900)
    assert f.on_heartbeat_reply(9) == []  # the stream may still bring 6..9
    f.tick(1500)  # replies keep the primary heard, but no record or beacon for 1.5 s
    assert f.on_heartbeat_reply(9) == [SendWalSync(6, MAX)]
    assert status(f) == Status.SYNCING


def test_beacon_of_another_history_re_registers() -> None:
    f = ready(applied=5)
    assert f.on_beacon(OTHER, 1) == [Reconnect("stream of another history"), sr(5, H)]


# ---- timers -------------------------------------------------------------------------------


def test_wal_sync_timeout_reconnects_and_asks_again() -> None:
    f = syncing(applied=5)
    f.on_heartbeat_reply(10)
    f.tick(499)
    out = f.tick(500)
    assert [type(a) for a in out[:2]] == [Reconnect, SendWalSync]
    assert out[1] == SendWalSync(6, MAX)


def test_register_timeout_disconnects() -> None:
    f = make()
    f.start(0)
    assert Reconnect("register timed out") in f.tick(500)
    assert status(f) == Status.DISCONNECTED


def test_primary_silence_disconnects_then_backoff_doubles_to_the_cap() -> None:
    f = ready()
    out = f.tick(1001)
    assert out == [Reconnect("primary silent for 1001 ms")] and status(f) == Status.DISCONNECTED
    now, waits = 1001, list[int]()
    for _ in range(6):  # the primary never answers: register, time out, back off, again
        t = now
        while status(f) == Status.DISCONNECTED:
            t += 1
            f.tick(t)
        waits.append(t - now)
        assert status(f) == Status.CONNECTING and f.pending_request == "register"
        now = t + 500
        assert Reconnect("register timed out") in f.tick(now)
    assert waits == [100, 200, 400, 800, 800, 800]


def test_retry_register_is_timed_from_the_retry_not_from_the_last_contact() -> None:
    """Regression: the silence clock ran from before the outage and killed every retry."""
    f = ready()
    f.tick(1001)  # silent: DISCONNECTED, retry in 100 ms
    assert f.tick(1101) == [sr(5, H)]
    assert f.tick(1111) == []  # the reply is on its way; nothing has timed out
    assert status(f) == Status.CONNECTING
    f.on_register_reply(5, 1, H, False)
    assert status(f) == Status.READY


def test_heartbeats_while_following() -> None:
    f = ready()
    assert [type(a) for a in f.tick(10)] == [SendHeartbeat]
    assert f.tick(50) == []
    hb = f.tick(110)
    assert hb == [SendHeartbeat(Status.READY, 5, 0, 0.0, "")]


def test_primary_forgetting_us_re_registers_and_keeps_data() -> None:
    f = ready(applied=5)
    assert f.on_not_registered() == [sr(5, H)]
    assert status(f) == Status.CONNECTING and f.applied_lsn == 5


# ---- bootstrap ----------------------------------------------------------------------------


def chunk(f: Follower, seq: int, last: bool = False, session: int = 7) -> list[object]:
    return list(f.on_bootstrap_chunk(session, seq, [b"k%d" % seq], [b"v"], seq / 10, last, 30, H))


def test_bootstrap_streams_against_credit_and_installs_atomically() -> None:
    f = syncing(applied=5)
    f.on_too_old(20)  # credit 4 granted with the request
    assert chunk(f, 0) == [WriteChunk([b"k0"], [b"v"])]
    # two of four credits left: top the primary back up to four
    assert chunk(f, 1) == [WriteChunk([b"k1"], [b"v"]), SendBootstrap(7, 2, 64)]
    assert chunk(f, 2) == [WriteChunk([b"k2"], [b"v"])]
    assert f.bootstrap_progress == pytest.approx(0.2)
    out = chunk(f, 3, last=True)
    assert out == [
        WriteChunk([b"k3"], [b"v"]),
        InstallBootstrap(30, H),
        SendWalSync(31, MAX),
    ]
    assert status(f) == Status.SYNCING and f.applied_lsn == 30 and f.durable_lsn == 30


def test_out_of_order_chunk_restarts_the_bootstrap_on_a_fresh_socket() -> None:
    f = syncing(applied=5)
    f.on_too_old(20)
    chunk(f, 0)
    out = chunk(f, 2)
    assert out == [
        Reconnect("bootstrap stream out of order"),
        BeginBootstrap(),
        SendBootstrap(0, 4, 64),
    ]
    assert status(f) == Status.BOOTSTRAPPING
    assert chunk(f, 0, session=8) == [WriteChunk([b"k0"], [b"v"])]  # the new session


def test_bootstrap_silence_times_out() -> None:
    f = syncing(applied=5)
    f.on_heartbeat_reply(10)
    f.on_too_old(20)
    out = f.tick(500)
    assert Reconnect("bootstrap timed out") in out and status(f) == Status.DISCONNECTED


def test_failed_install_rewinds_lsn_and_history_to_the_store() -> None:
    """Regression: a failed InstallBootstrap left the snapshot's history on the old data."""
    f = make(applied_lsn=40, history_id=OTHER)
    f.start(0)
    f.on_register_reply(10, 1, H, True)
    f.on_bootstrap_chunk(1, 0, [], [], 1.0, True, 10, H)  # the driver's install then fails
    out = f.storage_failed("disk full", 40, 200, store_history_id=OTHER)
    assert status(f) == Status.ERROR and f.applied_lsn == 40 and f.history_id == OTHER
    assert f.durable_lsn == 0  # was the snapshot's 10; the store says again what it synced
    f.durable(35)
    assert f.durable_lsn == 35
    assert [type(a) for a in out] == [SendHeartbeat]
    out = f.tick(200)
    assert sr(40, OTHER) in out  # the primary sees the mismatch: bootstrap again


def test_durable_never_passes_applied() -> None:
    """A stale checkpoint LSN (e.g. of the store a bootstrap replaced) is clamped."""
    f = ready(applied=5)
    f.durable(900)
    assert f.durable_lsn == 5
    assert f.take_ack() == [SendAck(5, 5)]


def test_a_replica_ahead_of_its_primary_refuses_it_unless_reinit() -> None:
    """On its own history, ahead: the primary lost data it had published; keep ours."""
    f = make(applied_lsn=20, history_id=H)
    f.start(0)
    assert f.on_register_reply(10, 1, H, True) == []
    assert status(f) == Status.ERROR and "behind us" in f.error_message
    g = make(applied_lsn=20, history_id=H, allow_unrelated_history=True)
    g.start(0)
    assert g.on_register_reply(10, 1, H, True) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]


def test_empty_replica_of_a_wiped_primary_catches_up_instead_of_bootstrapping() -> None:
    """Regression: an empty replica adopted the history at Register, so after the primary's
    data directory was wiped it registered with the old history and was sent a snapshot."""
    f = make()
    f.start(0)
    f.on_register_reply(0, 1, OTHER, False)  # joined the old primary: nothing to apply
    assert f.on_not_registered() == [sr(0, b"", HistoryChain.root(OTHER))]  # restarted, wiped
    assert f.on_register_reply(3, 1, H, False) == [SaveChain(CHAIN), SendWalSync(1, MAX)]
    assert f.on_wal_sync_reply([rec(1, 3)], 3) == [ApplyRecord(1, 3, b"1-3")]
    assert f.history_id == H


def test_every_transition_has_a_reason() -> None:
    assert all(why for why in TRANSITIONS.values())
    assert (Status.DISCONNECTED, Status.READY) not in TRANSITIONS


def test_bootstrap_receiver_grants_when_half_the_credit_is_used() -> None:
    from kevo_repl.core.bootstrap_receiver import BootstrapReceiver, ChunkVerdict

    b = BootstrapReceiver(credit=4)
    assert b.accept(9, 0, 0.1, False) is ChunkVerdict.ACCEPT and b.grant() == 0
    assert b.accept(9, 1, 0.2, False) is ChunkVerdict.ACCEPT and b.grant() == 2
    assert b.accept(8, 2, 0.3, False) is ChunkVerdict.BROKEN  # another session
    assert b.accept(9, 3, 0.3, False) is ChunkVerdict.BROKEN  # a chunk lost in between
    assert b.accept(9, 2, 1.0, True) is ChunkVerdict.LAST and b.progress == 1.0


# ---- histories with fork points ------------------------------------------------------------

PROMOTED = CHAIN.extend(OTHER, 5)  # H owns 1..5, OTHER from 6 (a promotion at LSN 5)


def test_a_follower_below_the_fork_continues_across_it_without_a_bootstrap() -> None:
    f = make(applied_lsn=3, history_id=H)
    f.start(0)
    assert f.on_register_reply(8, 1, PROMOTED, False) == [SaveChain(PROMOTED), SendWalSync(4, MAX)]
    out = f.on_wal_sync_reply([rec(4, 5, H), rec(6, 8, OTHER)], primary_lsn=8)
    assert out == [ApplyRecord(4, 5, b"4-5"), ApplyRecord(6, 8, b"6-8")]
    assert f.history_id == OTHER and f.chain == PROMOTED and f.counters.bootstraps == 0


def test_a_record_of_the_wrong_history_for_its_lsn_is_refused() -> None:
    f = make(applied_lsn=3, history_id=H)
    f.start(0)
    f.on_register_reply(8, 1, PROMOTED, False)
    out = f.on_wal_sync_reply([rec(4, 6, H)], primary_lsn=8)  # 6 belongs to OTHER
    assert ApplyRecord(4, 6, b"4-6") not in out and f.applied_lsn == 3


def test_a_tail_past_the_fork_is_set_aside_and_rewound_from_the_upstream() -> None:
    f = make(applied_lsn=9, history_id=H)  # the old primary: 6..9 written on H
    f.start(0)
    assert f.on_register_reply(12, 1, PROMOTED, False) == [DiscardTail(5, 9)]
    assert f.chain == CHAIN and not f.consistent  # not the upstream's until rewound
    out = f.on_tail_set_aside([b"b", b"a", b"b"])
    assert out == [SendRewind([b"a", b"b"])]
    out = f.on_rewind_reply(12, [b"a", b"b"], [b"A", b""], [True, False])
    assert out == [
        RewindStore(5, H, [(b"a", b"A"), (b"b", None)], 12),
        SaveChain(PROMOTED),
        SendWalSync(6, MAX),
    ]
    assert f.applied_lsn == 5 and status(f) == Status.SYNCING and not f.consistent
    f.on_wal_sync_reply([rec(6, 12, OTHER)], primary_lsn=12)
    assert f.consistent and f.counters.bootstraps == 0 and f.counters.rewinds == 1


def test_a_tail_that_is_the_whole_history_is_rewound_not_bootstrapped() -> None:
    """Found by the failover simulation (seed 784): a replica promoted before it held any
    record forks at LSN 0; the old primary's whole WAL is then its tail, which the upstream's
    log covers from LSN 1, so a rewind of the keys it touched does, not a bootstrap."""
    fork_at_0 = CHAIN.extend(OTHER, 0)
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    assert f.on_register_reply(12, 1, fork_at_0, False) == [DiscardTail(0, 9)]
    assert f.on_tail_set_aside([b"a"]) == [SendRewind([b"a"])]
    out = f.on_rewind_reply(12, [b"a"], [b"A"], [True])
    assert out == [
        RewindStore(0, b"", [(b"a", b"A")], 12),
        SaveChain(fork_at_0),
        SendWalSync(1, MAX),
    ]
    assert f.counters.bootstraps == 0


def test_a_rewound_node_counts_for_no_waiting_write_until_it_is_consistent() -> None:
    """Found by the failover simulation (seed 85): a node replaying after a rewind acked
    writes as durable, so a wait_replicas=1 write could be held only by a node that cannot
    be promoted (its store is no state of the history until it passes the rewind's LSN)."""
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    f.on_register_reply(12, 1, PROMOTED, False)
    f.on_tail_set_aside([b"a"])
    f.on_rewind_reply(12, [b"a"], [b"A"], [True])
    f.on_wal_sync_reply([rec(6, 8, OTHER)], primary_lsn=12)
    f.durable(8)
    assert f.take_ack() == [SendAck(8, 0)] and not f.consistent
    f.on_record(*rec(9, 12, OTHER))
    f.durable(12)
    assert f.consistent and f.take_ack() == [SendAck(12, 12)]


def test_a_rewind_request_that_times_out_starts_the_join_over() -> None:
    """Found by the failover simulation (seed 261): the timeout sent a WalSync while the
    rewind was pending, whose replies a joining follower ignores, forever."""
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    f.on_register_reply(12, 1, PROMOTED, False)
    assert f.on_tail_set_aside([b"a"]) == [SendRewind([b"a"])]
    out = f.tick(600)  # the request timed out, the upstream not yet silent
    assert Reconnect in [type(a) for a in out] and SendWalSync not in [type(a) for a in out]
    assert status(f) == Status.DISCONNECTED
    f.tick(800)  # backoff over: Register again, diverged again, rewind again
    assert f.on_register_reply(12, 1, PROMOTED, False) == [DiscardTail(5, 9)]


def test_a_tail_the_wal_no_longer_holds_is_copied_by_a_bootstrap() -> None:
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    f.on_register_reply(12, 1, PROMOTED, False)
    assert f.on_tail_set_aside(None) == [BeginBootstrap(), SendBootstrap(0, 4, 64)]


def test_a_rewind_answer_below_the_fork_is_retried_not_bootstrapped() -> None:
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    f.on_register_reply(12, 1, PROMOTED, False)
    f.on_tail_set_aside([b"a"])
    out = f.on_rewind_reply(4, [b"a"], [b"x"], [True])  # the upstream went back
    assert [type(a) for a in out] == [Reconnect]
    assert status(f) == Status.DISCONNECTED and f.counters.bootstraps == 0


def test_an_upstream_behind_the_fork_is_waited_for_not_bootstrapped_from() -> None:
    """Found by the failover simulation (seeds 155, 179): a diverged node registering with
    a replica still below the fork could not get the values there and copied everything."""
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    out = f.on_register_reply(4, 1, PROMOTED, False, upstream_is_primary=False)
    assert len(out) == 1 and isinstance(out[0], Reconnect) and "pass the fork" in out[0].reason
    assert status(f) == Status.DISCONNECTED and f.counters.bootstraps == 0
    f.tick(10_000)  # backoff over: register again, and the upstream has passed the fork
    assert f.on_register_reply(12, 1, PROMOTED, False, upstream_is_primary=False) == [
        DiscardTail(5, 9)
    ]


def test_an_upstream_on_a_history_we_left_is_refused() -> None:
    f = make(applied_lsn=7, history_id=OTHER, chain=PROMOTED)
    f.start(0)
    assert f.on_register_reply(20, 1, H, False) == []
    assert status(f) == Status.ERROR and "it must follow the newer history" in f.error_message


def test_an_upstream_with_no_data_does_not_empty_our_chain() -> None:
    """Found by the failover simulation (seed 709): an old primary following a replica that
    held nothing yet took its empty chain, saved it, and lost track of its own history."""
    f = make(applied_lsn=9, history_id=H, chain=CHAIN)
    f.start(0)
    out = f.on_register_reply(0, 1, HistoryChain(), False, upstream_is_primary=False)
    assert not any(isinstance(a, SaveChain) for a in out) and f.chain == CHAIN


def test_a_replica_upstream_behind_us_is_followed_not_refused() -> None:
    f = make(applied_lsn=9, history_id=H)
    f.start(0)
    assert f.on_register_reply(5, 1, H, False, upstream_is_primary=False) == []
    assert status(f) == Status.READY and f.applied_lsn == 9
    assert f.on_record(*rec(6, 9)) == []  # its stream catches up with us: already applied
    assert f.on_record(*rec(10, 10)) == [ApplyRecord(10, 10, b"10-10")]
