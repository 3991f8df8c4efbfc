"""WriteAheadLog on real files: LSNs, rotation, read_from, retention, policies, failures."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kevo_repl.adapters import wal_segments
from kevo_repl.adapters.wal_files import Appended, FsyncPolicy, WriteAheadLog
from kevo_repl.adapters.wal_segments import SEGMENT_HEADER_BYTES, segment_name
from kevo_repl.core.errors import CorruptRecordError, StorageError, TooOldError
from kevo_repl.core.record import decode_record, encode_record


def payload(size: int, seed: int) -> bytes:
    block = hashlib.blake2b(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.001)


def segment_lsns(directory: Path) -> list[int]:
    return [int(p.stem) for p in sorted(directory.glob("*.wal"))]


def test_a_fresh_log(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path / "new") as wal:
        assert (wal.last_lsn, wal.durable_lsn, wal.retained_from_lsn) == (0, 0, 1)
        assert len(wal.history_id) == 16 and wal.recovery.clean
        assert wal.size_bytes == SEGMENT_HEADER_BYTES
        assert list(wal.read_from(1)) == []
    assert segment_lsns(tmp_path / "new") == [1]


def test_append_assigns_contiguous_lsns_and_returns_the_stored_record(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        a = wal.append(b"one", 1)
        b = wal.append(b"three", 3)
        assert (a.first_lsn, a.last_lsn, b.first_lsn, b.last_lsn) == (1, 1, 2, 4)
        assert b.record == encode_record(2, 4, b"three")
        assert wal.durable_lsn == wal.last_lsn == 4
        assert wal.stats.appends == 2 and wal.stats.bytes_written == len(a.record + b.record)
        with pytest.raises(ValueError):
            wal.append(b"none", 0)


def test_lsns_continue_across_rotation_and_reopen(tmp_path: Path) -> None:
    sizes = [700, 900, 5000, 300, 300, 300, 4000]  # 5000 > segment_bytes: a segment of its own
    appended: list[Appended] = []
    for round_ in range(3):
        with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
            appended += [wal.append(payload(s, round_ * 10 + i), 2) for i, s in enumerate(sizes)]
            assert wal.stats.rotations >= 3
    lsns = [(a.first_lsn, a.last_lsn) for a in appended]
    assert lsns == [(2 * i + 1, 2 * i + 2) for i in range(len(appended))]
    firsts = segment_lsns(tmp_path)
    assert firsts[0] == 1 and all(f in {a.first_lsn for a in appended} for f in firsts)
    with WriteAheadLog.open(tmp_path) as wal:
        assert list(wal.read_from(1)) == [a.record for a in appended]
    for path in tmp_path.glob("*.wal"):  # every sealed segment respects the size bound
        size = path.stat().st_size
        assert size <= 4096 or size - SEGMENT_HEADER_BYTES > 4096 - SEGMENT_HEADER_BYTES - 1000


def test_read_from_every_lsn_of_a_multi_segment_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_segments, "INDEX_STRIDE_BYTES", 600)  # several index points each
    with WriteAheadLog.open(tmp_path, segment_bytes=8192) as wal:
        appended = [wal.append(payload(100 + i % 7 * 40, i), 1 + i % 3) for i in range(120)]
    assert len(segment_lsns(tmp_path)) >= 4
    records = [a.record for a in appended]
    for _ in range(2):  # once more after reopen: the index is rebuilt by recovery
        with WriteAheadLog.open(tmp_path, segment_bytes=8192) as wal:
            for lsn in range(1, wal.last_lsn + 1):
                first = next(i for i, a in enumerate(appended) if a.last_lsn >= lsn)
                assert list(wal.read_from(lsn)) == records[first:], lsn
            assert list(wal.read_from(wal.last_lsn + 1)) == []
            with pytest.raises(ValueError):
                wal.read_from(0)


def test_read_from_max_bytes(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
        records = [wal.append(payload(300, i), 1).record for i in range(30)]
        size = len(records[0])
        for max_bytes in (0, 1, size - 1, size, size + 1, 5 * size, 5 * size + 7, 10**9):
            got = list(wal.read_from(3, max_bytes=max_bytes))
            assert got == records[2 : 2 + max(1, max_bytes // size)], max_bytes


def test_read_from_returns_only_what_was_complete_when_called(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
        records = [wal.append(payload(300, i), 1).record for i in range(5)]
        reader = wal.read_from(2)
        first = next(reader)
        records += [wal.append(payload(300, i), 1).record for i in range(5, 40)]  # rotates
        assert [first, *reader] == records[1:5]
        assert list(wal.read_from(2)) == records[1:]


def test_retention_drops_only_whole_segments_below_the_bound(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
        appended = [wal.append(payload(300, i), 1) for i in range(60)]
        firsts = segment_lsns(tmp_path)
        assert len(firsts) >= 5
        assert wal.retain(firsts[1] - 1) == firsts[0]  # segment 0 still holds firsts[1] - 1
        assert wal.retain(firsts[1]) == firsts[1]  # now segment 0 is wholly below
        assert wal.retain(firsts[2] + 1) == firsts[2]
        assert segment_lsns(tmp_path) == firsts[2:]
        with pytest.raises(TooOldError) as info:
            wal.read_from(firsts[2] - 1)
        assert (info.value.requested_lsn, info.value.retained_from_lsn) == (
            firsts[2] - 1,
            firsts[2],
        )
        assert next(wal.read_from(firsts[2])) == appended[firsts[2] - 1].record
        size_before = wal.size_bytes
        assert wal.retain(0, max_bytes=size_before - 1) == firsts[3]  # one segment is enough
        assert wal.size_bytes <= size_before - 1
        assert wal.retain(wal.last_lsn + 100, max_bytes=0) == firsts[-1]  # never the active
        assert segment_lsns(tmp_path) == firsts[-1:]
        assert list(wal.read_from(firsts[-1])) == [a.record for a in appended[firsts[-1] - 1 :]]
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.retained_from_lsn == firsts[-1] and wal.last_lsn == 60


def test_group_commit_shares_fdatasyncs_between_concurrent_appenders(tmp_path: Path) -> None:
    threads_n, per_thread = 16, 40
    results: list[list[Appended]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)
    with WriteAheadLog.open(tmp_path, segment_bytes=64 * 1024) as wal:

        def writer(i: int) -> None:
            start.wait()
            for j in range(per_thread):
                results[i].append(wal.append(payload(200, i * 1000 + j), 1 + j % 4))
                assert wal.durable_lsn >= results[i][-1].last_lsn

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = wal.stats
        everything = sorted((a for r in results for a in r), key=lambda a: a.first_lsn)
        assert len(everything) == stats.appends == threads_n * per_thread
        assert stats.syncs < stats.appends
        expected_first = 1
        for a in everything:
            assert a.first_lsn == expected_first
            expected_first = a.last_lsn + 1
        for mine in results:
            assert all(x.last_lsn < y.first_lsn for x, y in itertools.pairwise(mine))
        assert wal.durable_lsn == wal.last_lsn == everything[-1].last_lsn
        assert list(wal.read_from(1)) == [a.record for a in everything]


def test_write_then_sync(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.ALWAYS) as wal:
        written = [wal.write(payload(100, i), 1) for i in range(10)]
        assert wal.durable_lsn == 0 and wal.last_lsn == 10
        syncers = [threading.Thread(target=wal.sync) for _ in range(4)]
        for t in syncers:
            t.start()
        for t in syncers:
            t.join()
        assert wal.sync() == wal.durable_lsn == 10
        assert list(wal.read_from(1)) == [w.record for w in written]


def test_interval_policy_syncs_in_the_background(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.INTERVAL, fsync_interval_ms=5)
    syncer = next(t for t in threading.enumerate() if t.name == f"wal-fsync-{tmp_path.name}")
    wal.append(b"a", 1)
    wait_for(lambda: wal.durable_lsn == 1)
    wal.append(b"b", 1)
    wal.close()
    assert wal.durable_lsn == 2 and not syncer.is_alive()


def test_none_policy_syncs_only_when_asked(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.NONE) as wal:
        wal.append(b"a", 1)
        assert wal.durable_lsn == 0 and wal.stats.syncs == 0
        assert wal.sync() == 1
        wal.append(b"b", 1)
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy("none")) as wal:
        assert wal.last_lsn == 2


def test_a_closed_log_refuses_work(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.close()
    wal.close()
    for call in (lambda: wal.append(b"x", 1), lambda: wal.read_from(1), lambda: wal.retain(1)):
        with pytest.raises(StorageError, match="closed"):
            call()


def test_a_failed_fdatasync_stops_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.append(b"fine", 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError, match=segment_name(1)):
        wal.append(b"lost?", 1)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="Input/output error"):  # no retry after fsyncgate
        wal.append(b"later", 1)
    wal.close()
    with WriteAheadLog.open(tmp_path) as reopened:  # recovery decides what is there
        assert [decode_record(r).first_lsn for r in reopened.read_from(1)] == [1, 2]


def test_os_errors_become_storage_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="file"):
        WriteAheadLog.open(tmp_path / "file")
    with pytest.raises(ValueError):
        WriteAheadLog.open(tmp_path / "x", segment_bytes=100)


def test_a_segment_removed_under_a_reader_is_too_old(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
        for i in range(40):
            wal.append(payload(300, i), 1)
        reader = wal.read_from(1)
        wal.retain(wal.last_lsn)
        with pytest.raises(TooOldError):
            list(reader)


def test_a_history_switch_starts_a_segment_and_survives_reopening(tmp_path: Path) -> None:
    h1, h2 = b"\x01" * 16, b"\x02" * 16
    with WriteAheadLog.open(tmp_path, history_id=h1, fsync=FsyncPolicy.NONE) as wal:
        wal.switch_history(h1)  # the same: nothing happens
        wal.write(b"a", 1)
        wal.switch_history(h2)
        wal.write(b"b", 1)
        assert wal.history_id == h2
        assert wal.segment_histories() == [(1, h1), (2, h2)]
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.NONE) as wal:
        assert wal.history_id == h2 and wal.last_lsn == 2
        assert wal.segment_histories() == [(1, h1), (2, h2)]
        assert [decode_record(r).first_lsn for r in wal.read_from(1)] == [1, 2]


def test_switching_an_empty_active_segment_rewrites_its_header(tmp_path: Path) -> None:
    h2 = b"\x02" * 16
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.NONE) as wal:
        wal.switch_history(h2)
        assert wal.segment_histories() == [(1, h2)]
        wal.write(b"after the switch", 1)  # regression: it went to the replaced file
    with WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.NONE) as wal:
        assert wal.history_id == h2 and wal.last_lsn == 1


def test_received_records_are_appended_byte_for_byte_and_must_follow(tmp_path: Path) -> None:
    h1, h2 = b"\x01" * 16, b"\x02" * 16
    upstream = [encode_record(1, 3, b"abc"), encode_record(4, 4, b"d"), encode_record(5, 9, b"e")]
    with WriteAheadLog.open(tmp_path / "a", history_id=h1, fsync=FsyncPolicy.NONE) as wal:
        wal.append_record(upstream[0], h1)
        with pytest.raises(StorageError, match="does not follow"):
            wal.append_record(upstream[2], h1)
        wal.append_record(upstream[1], h1)
        wal.append_record(upstream[2], h2)
        assert list(wal.read_from(1)) == upstream
        assert wal.segment_histories() == [(1, h1), (5, h2)]


def test_a_history_the_log_left_may_not_come_back(tmp_path: Path) -> None:
    h1, h2 = b"\x01" * 16, b"\x02" * 16
    with WriteAheadLog.open(tmp_path, history_id=h1, fsync=FsyncPolicy.NONE) as wal:
        wal.write(b"a", 1)
        wal.switch_history(h2)
        wal.write(b"b", 1)
        with pytest.raises(StorageError, match="was left before"):
            wal.switch_history(h1)
    wal_segments.create_segment(tmp_path, 3, h1)  # as if written anyway
    with pytest.raises(CorruptRecordError, match="which the log had left"):
        WriteAheadLog.open(tmp_path, fsync=FsyncPolicy.NONE)
