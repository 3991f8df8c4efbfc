"""The group committer on a real WAL and store: byte caps, record cuts, order, failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog
from kevo_repl.core.errors import StorageError
from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.core.record import decode_record
from kevo_repl.node.group_commit import RECORD_OVERHEAD_BYTES, GroupCommitter, PendingWrite
from kevo_repl.wire.batch import encode_single

KIB = 1024


def write(i: int, value_bytes: int) -> PendingWrite:
    key, value = b"k%05d" % i, b"v" * value_bytes
    return PendingWrite(
        b"peer", i, encode_single(OP_PUT, key, value), 1, 0, 0, (OP_PUT,), (key,), (value,)
    )


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[GroupCommitter]:
    wal = WriteAheadLog.open(tmp_path / "wal", fsync=FsyncPolicy.NONE)
    store = StateStore.open(tmp_path / "state.mdb")
    c = GroupCommitter(wal, store, lambda: 1, max_group_bytes=2048 * KIB)
    yield c
    c.close()
    store.close()
    wal.close()


def run_group(c: GroupCommitter) -> list[tuple[int, int, int]]:
    """Start one group, wait for it; (first_lsn, last_lsn, record bytes) of its records."""
    done = threading.Event()
    flight = c.start(done.set)
    assert flight is not None and done.wait(10)
    assert c.finish_ready(wait=True) == [flight]
    c.apply_finished()
    return [
        (r.appended.first_lsn, r.appended.last_lsn, len(r.appended.record)) for r in flight.records
    ]


def test_a_group_is_capped_in_bytes_and_cut_into_stream_sized_records(
    committer: GroupCommitter,
) -> None:
    for i in range(100):
        assert not committer.add(write(i, 50 * KIB)) or committer.pending_bytes >= 2048 * KIB
    records = run_group(committer)
    assert sum(size for *_, size in records) <= 2048 * KIB + len(records) * RECORD_OVERHEAD_BYTES
    assert all(
        size <= committer.record_target_bytes + RECORD_OVERHEAD_BYTES for *_, size in records
    )
    assert [first for first, _, _ in records] == [1] + [last + 1 for _, last, _ in records[:-1]]
    left = len(committer.pending)
    assert 0 < left < 100  # the rest waits for the next group, in order
    assert committer.pending[0].request_id == records[-1][1]  # write i has LSN i + 1
    while committer.pending:
        run_group(committer)
    assert committer.store.applied_lsn == 100 and committer.committed_lsn == 100
    lsns = [decode_record(r).last_lsn for r in committer.wal.read_from(1)]
    assert lsns == sorted(lsns) and lsns[-1] == 100
    assert committer.store.get(b"k00099") == b"v" * (50 * KIB)


def test_a_write_over_the_record_target_is_a_record_of_its_own(committer: GroupCommitter) -> None:
    for i, size in enumerate((10, 600 * KIB, 10, 10)):
        committer.add(write(i, size))
    records = run_group(committer)
    assert [(first, last) for first, last, _ in records] == [(1, 1), (2, 2), (3, 4)]
    assert records[1][2] > 600 * KIB


def test_a_wal_failure_puts_the_group_back_for_the_caller_to_answer(
    committer: GroupCommitter,
) -> None:
    for i in range(5):
        committer.add(write(i, 100))
    committer.wal.close()  # every write now fails
    with pytest.raises(StorageError):
        committer.start(lambda: None)
    assert [w.request_id for w in committer.take_pending()] == [0, 1, 2, 3, 4]
    assert committer.pending_bytes == 0 and committer.pending_entries == 0


def test_store_repair_never_applies_a_group_still_syncing(committer: GroupCommitter) -> None:
    """Regression: ``catch_up_store`` replayed every WAL record, so a repair during a sync
    could apply a group a crash could still take back."""
    committer.add(write(0, 10))
    run_group(committer)
    committer.add(write(1, 10))
    gate = threading.Event()
    committer._syncer.submit(gate.wait)  # hold the sync thread: the next group stays in flight
    assert committer.start(lambda: None) is not None
    assert committer.wal.last_lsn == 2 and committer.committed_lsn == 1
    assert committer.catch_up_store() == 0
    assert committer.store.applied_lsn == 1
    gate.set()
    assert len(committer.finish_ready(wait=True)) == 1 and committer.store.applied_lsn == 1
    committer.apply_finished()
    assert committer.store.applied_lsn == 2


def test_answered_groups_reach_the_store_in_one_transaction_deletes_before_their_answer(
    committer: GroupCommitter,
) -> None:
    """Puts are stored after their answers (the loop applies them before any read), in one
    transaction for every group finished; a group with a delete is stored before it is
    answered, since the answer counts the deletes that found no key."""
    for i in range(2):
        committer.add(write(i, 10))
        flight = committer.start(lambda: None)
        assert flight is not None and committer.finish_ready(wait=True) == [flight]
    assert committer.committed_lsn == 2 and committer.store.applied_lsn == 0
    assert len(committer.applying) == 2
    committer.apply_finished()
    assert committer.store.applied_lsn == 2 and committer.store.get(b"k00001") == b"v" * 10
    committer.add(write(2, 10))
    gone = encode_single(OP_DELETE, b"nope", b"")
    committer.add(PendingWrite(b"peer", 9, gone, 1, 0, 0, (OP_DELETE,), (b"nope",), (b"",)))
    flight = committer.start(lambda: None)
    assert flight is not None and flight.deletes
    assert committer.finish_ready(wait=True) == [flight]
    assert committer.store.applied_lsn == 4 and flight.absent == [4] and not committer.applying
