"""The idempotent retry window: its rules, its bounds, and its rebuild from a real WAL.

The LSNs a group commit gives each client batch (``SealedRecord.committed``) must be the
ones the record's ``client_writes`` prefix gives back after a restart, for records mixing
idempotent batches, plain batches and single puts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog
from kevo_repl.core.ops import OP_PUT
from kevo_repl.core.record import decode_record
from kevo_repl.core.retry_window import RetryTooOldError, RetryWindow, SeqReusedError
from kevo_repl.node.group_commit import CommittedWrite, GroupCommitter, PendingWrite
from kevo_repl.node.retry_guard import RetryGuard, payload_hash, rebuild_window
from kevo_repl.wire import pb
from kevo_repl.wire.batch import (
    decode_batch,
    encode_client_batch,
    parse_client_batch,
    read_client_writes,
    seal_batch,
)

A, B = b"a" * 16, b"b" * 16
H1, H2 = b"1" * 16, b"2" * 16


def test_a_remembered_batch_is_answered_with_its_original_lsns() -> None:
    w = RetryWindow()
    w.remember(A, 1, H1, 10, 14)
    hit = w.lookup(A, 1, H1, retry=True, seen_lsn=0)
    assert hit is not None and (hit.first_lsn, hit.last_lsn) == (10, 14)
    assert w.lookup(A, 2, H1, retry=False, seen_lsn=0) is None  # a new seq: write it
    assert w.lookup(B, 1, H1, retry=True, seen_lsn=0) is None  # another client's seq 1


def test_a_seq_reused_with_other_bytes_is_refused() -> None:
    w = RetryWindow()
    w.remember(A, 1, H1, 10, 14)
    with pytest.raises(SeqReusedError, match="LSN 10-14 with other contents"):
        w.lookup(A, 1, H2, retry=False, seen_lsn=0)


def test_a_retry_the_window_may_have_forgotten_is_refused_not_written() -> None:
    w = RetryWindow(per_client=2)
    for seq in (1, 2, 3):  # seq 1 (LSN 1) is forgotten: the client's floor is LSN 1
        w.remember(A, seq, H1, seq, seq)
    with pytest.raises(RetryTooOldError, match="older than the idempotent retry window"):
        w.lookup(A, 1, H1, retry=True, seen_lsn=0)
    # First sent after LSN 1 (the client said so): it can only have committed above the floor,
    # where the window still sees everything; not there, so it never committed: write it.
    assert w.lookup(A, 9, H1, retry=True, seen_lsn=1) is None
    assert w.lookup(A, 9, H1, retry=False, seen_lsn=0) is None  # a first send is never refused


def test_the_client_whose_last_commit_is_oldest_goes_first() -> None:
    w = RetryWindow(max_clients=2)
    w.remember(A, 1, H1, 1, 1)
    w.remember(B, 1, H1, 2, 2)
    w.remember(A, 2, H1, 3, 3)  # A is now the more recent
    c = b"c" * 16
    w.remember(c, 1, H1, 4, 4)  # B goes, and the floor for clients not remembered rises
    assert w.clients == 2 and w.batches == 3 and w.floor_lsn == 2
    assert w.lookup(A, 1, H1, retry=True, seen_lsn=0) is not None
    with pytest.raises(RetryTooOldError):
        w.lookup(B, 1, H1, retry=True, seen_lsn=1)
    assert w.lookup(B, 1, H1, retry=True, seen_lsn=2) is None
    # C came after the floor rose past B alone: C's own batches are all remembered.
    assert w.lookup(c, 7, H1, retry=True, seen_lsn=0) is None


def test_the_window_memory_stays_within_its_bound() -> None:
    w = RetryWindow(per_client=4, max_clients=8)
    lsn = 0
    for client in range(50):
        for seq in range(1, 20):
            lsn += 1
            w.remember(client.to_bytes(16, "big"), seq, H1, lsn, lsn)
    assert w.clients == 8 and w.batches == 32


def test_clients_may_not_set_the_primarys_fields() -> None:
    payload = pb.WalBatch(
        ops=[pb.OP_PUT], keys=[b"k"], values=[b"v"], client_writes=[pb.ClientWrite(seq=1)]
    ).SerializeToString()
    with pytest.raises(Exception, match="client_writes are set by the primary"):
        parse_client_batch(payload, max_key_bytes=511, max_value_bytes=1 << 20, max_entries=10)


def test_the_prefix_does_not_change_the_entries() -> None:
    a = encode_client_batch([OP_PUT] * 2, [b"a1", b"a2"], [b"1", b"2"])
    b = encode_client_batch([OP_PUT], [b"b1"], [b"3"])
    cw = pb.ClientWrite(client_id=A, seq=5, offset=2, count=1, payload_hash=payload_hash(b))
    sealed = seal_batch([a, b], H1, 7, [cw])
    assert sealed.endswith(a + b + pb.WalBatch(history_id=H1, commit_time_us=7).SerializeToString())
    got = decode_batch(sealed)
    assert list(got.keys) == [b"a1", b"a2", b"b1"] and got.history_id == H1
    assert list(got.client_writes) == [cw] == read_client_writes(sealed)
    assert read_client_writes(seal_batch([a], H1, 7)) == []


# ---- through the group committer and a real WAL ------------------------------------------


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[GroupCommitter]:
    wal = WriteAheadLog.open(tmp_path / "wal", fsync=FsyncPolicy.NONE)
    store = StateStore.open(tmp_path / "state.mdb")
    c = GroupCommitter(wal, store, lambda: 1, record_target_bytes=600)
    yield c
    c.close()
    store.close()
    wal.close()


def _write(i: int, count: int, client: bytes = b"", seq: int = 0) -> PendingWrite:
    keys = [b"k%d.%d" % (i, j) for j in range(count)]
    values = [b"v" * 20] * count
    payload = encode_client_batch([OP_PUT] * count, keys, values)
    w = PendingWrite(b"peer", i, payload, count, 0, 0, [OP_PUT] * count, keys, values)
    if client:
        w.client_id, w.seq, w.payload_hash = client, seq, payload_hash(payload)
    return w


def _commit(c: GroupCommitter, writes: list[PendingWrite]) -> list[CommittedWrite]:
    for w in writes:
        c.add(w)
    done = threading.Event()
    flight = c.start(done.set)
    assert flight is not None and done.wait(10)
    assert c.finish_ready(wait=True) == [flight]
    c.apply_finished()
    assert len(flight.records) > 1  # several records, each with its own prefix
    return flight.committed()


def test_a_restart_rebuilds_the_lsns_each_batch_was_answered_with(
    committer: GroupCommitter,
) -> None:
    writes = [
        _write(i, 1 + i % 4, client=(A if i % 3 else b""), seq=i) if i % 5 else _write(i, 1)
        for i in range(1, 40)
    ]
    committed = _commit(committer, writes)
    answered = {(c.write.client_id, c.write.seq): c.lsns for c in committed if c.write.client_id}
    assert len(answered) > 10
    wal = committer.wal
    window = rebuild_window(wal, wal.last_lsn)
    assert window.floor_lsn == 0 and window.batches == len(answered)
    for (client, seq), lsns in answered.items():
        w = next(w for w in writes if w.client_id == client and w.seq == seq)
        hit = window.lookup(client, seq, w.payload_hash, retry=True, seen_lsn=0)
        assert hit is not None and (hit.first_lsn, hit.last_lsn) == lsns
    # The entries those LSNs name are the batch's own.
    by_lsn: dict[int, bytes] = {}
    for record in wal.read_from(1):
        d = decode_record(record)
        for offset, key in enumerate(decode_batch(d.payload).keys):
            by_lsn[d.first_lsn + offset] = key
    for c in committed:
        assert [by_lsn[lsn] for lsn in range(c.first_lsn, c.last_lsn + 1)] == list(c.write.keys)


def test_the_rebuild_looks_back_a_bounded_number_of_lsns(committer: GroupCommitter) -> None:
    writes = [_write(i, 2, client=B, seq=i) for i in range(1, 30)]  # seq i: LSNs 2i-1, 2i
    _commit(committer, writes)
    wal = committer.wal
    window = rebuild_window(wal, wal.last_lsn, horizon=20)
    assert window.floor_lsn == wal.last_lsn - 20 == 38
    for w in writes[19:]:  # above the floor: every batch is there
        assert window.lookup(B, w.seq, w.payload_hash, retry=True, seen_lsn=0) is not None
    assert window.batches < 20  # below it, only what shares the first record read
    with pytest.raises(RetryTooOldError):
        window.lookup(B, 1, writes[0].payload_hash, retry=True, seen_lsn=0)


def test_a_retry_of_a_pending_batch_is_attached_not_queued() -> None:
    guard = RetryGuard(RetryWindow())
    w = _write(1, 2, client=A, seq=1)
    body = pb.BatchRequest(batch=w.payload, client_id=A, seq=1, retry=True)
    assert guard.check(body, w.payload_hash) is None
    guard.accepted(w)
    assert guard.check(body, w.payload_hash) is w
    with pytest.raises(Exception, match="being committed with other contents") as err:
        guard.check(body, b"x" * 16)
    assert getattr(err.value, "code", None) == pb.ERROR_SEQ_REUSED
    guard.committed([CommittedWrite(w, 5, 6)])
    hit = guard.check(body, w.payload_hash)
    assert not guard.pending and hit is not None and not isinstance(hit, PendingWrite)
    assert (hit.first_lsn, hit.last_lsn) == (5, 6)
    with pytest.raises(Exception, match="client_id must be 16 bytes"):
        guard.check(pb.BatchRequest(client_id=b"short", seq=1), b"")
