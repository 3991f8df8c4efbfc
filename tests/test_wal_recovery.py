"""WAL recovery on real files: torn tails are cut and reported, corruption is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kevo_repl.adapters.wal_files import Appended, FsyncPolicy, WriteAheadLog
from kevo_repl.adapters.wal_segments import SEGMENT_HEADER_BYTES
from kevo_repl.core.errors import CorruptRecordError, HistoryMismatchError


def payload(size: int, seed: int) -> bytes:
    """Deterministic bytes without long zero runs (a zero sector would look like a lost write)."""
    block = hashlib.blake2b(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def fill(directory: Path, sizes: list[int], segment_bytes: int = 64 << 20) -> list[Appended]:
    with WriteAheadLog.open(directory, fsync=FsyncPolicy.NONE, segment_bytes=segment_bytes) as wal:
        return [wal.append(payload(size, i), 1 + i % 3) for i, size in enumerate(sizes)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def records_in(directory: Path) -> list[bytes]:
    with WriteAheadLog.open(directory, fsync=FsyncPolicy.NONE) as wal:
        return list(wal.read_from(wal.retained_from_lsn))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_cleanly_closed_log_recovers_everything_and_reports_nothing(tmp_path: Path) -> None:
    appended = fill(tmp_path, [100, 200, 300])
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.recovery.clean
        assert (wal.recovery.records, wal.recovery.last_lsn) == (3, appended[-1].last_lsn)
        assert list(wal.read_from(1)) == [a.record for a in appended]


def test_cut_at_every_byte_of_the_last_record_keeps_exactly_the_complete_batches(
    tmp_path: Path,
) -> None:
    appended = fill(tmp_path / "src", [50, 80, 120, 150])
    (segment,) = segment_files(tmp_path / "src")
    full = segment.read_bytes()
    last = appended[-1].record
    start = len(full) - len(last)
    assert full[start:] == last  # close() trimmed the preallocated zeros
    work = tmp_path / "work"
    work.mkdir()
    for cut in range(start, len(full)):
        for stale in work.iterdir():
            stale.unlink()
        (work / segment.name).write_bytes(full[:cut])
        with WriteAheadLog.open(work, fsync=FsyncPolicy.NONE) as wal:
            assert wal.last_lsn == appended[-2].last_lsn, cut
            assert list(wal.read_from(1)) == [a.record for a in appended[:-1]], cut
            dropped = wal.recovery.dropped
            if any(full[start:cut]):
                assert len(dropped) == 1, cut
                assert (dropped[0].path, dropped[0].offset) == (str(work / segment.name), start)
                assert dropped[0].reason.startswith("torn tail")
            else:
                assert dropped == (), cut
        assert (work / segment.name).stat().st_size == start
    with WriteAheadLog.open(work) as wal:  # the log goes on where the complete batches ended
        assert wal.append(b"next", 2).first_lsn == appended[-2].last_lsn + 1
    assert len(records_in(work)) == len(appended)


def test_lost_sectors_in_preallocated_space_are_a_torn_tail(tmp_path: Path) -> None:
    appended = fill(tmp_path / "src", [100, 3000])
    (segment,) = segment_files(tmp_path / "src")
    full = segment.read_bytes() + bytes(8192)  # as the active, zero-filled segment looks
    start, end = len(full) - 8192 - len(appended[-1].record), len(full) - 8192
    work = tmp_path / "work"
    work.mkdir()
    damages = [(p, end) for p in range(-(-start // 512) * 512, end, 512)]  # cut at a sector
    damages.append((-(-start // 512) * 512 + 512, -(-start // 512) * 512 + 1024))  # one sector
    for lo, hi in damages:
        (work / segment.name).write_bytes(full[:lo] + bytes(hi - lo) + full[hi:])
        with WriteAheadLog.open(work, fsync=FsyncPolicy.NONE) as wal:
            assert wal.last_lsn == appended[0].last_lsn, (lo, hi)
            (dropped,) = wal.recovery.dropped
            assert dropped.offset == start and dropped.reason.startswith("torn tail")
    (work / segment.name).write_bytes(full)  # zeros after intact data: not a failure
    with WriteAheadLog.open(work, fsync=FsyncPolicy.NONE) as wal:
        assert wal.recovery.clean and wal.last_lsn == appended[-1].last_lsn
    assert (work / segment.name).stat().st_size == end


def _locate(directory: Path, record: bytes) -> tuple[Path, int]:
    for path in segment_files(directory):
        if (offset := path.read_bytes().find(record)) >= 0:
            return path, offset
    raise AssertionError("record not found")


def test_a_flipped_byte_anywhere_in_a_complete_record_is_refused(tmp_path: Path) -> None:
    appended = fill(tmp_path, [250] * 40, segment_bytes=4096)
    assert len(segment_files(tmp_path)) >= 3
    targets = [appended[3], appended[-5], appended[-1]]  # early segment, last segment, tail
    assert _locate(tmp_path, targets[0].record)[0] != segment_files(tmp_path)[-1]
    for target in targets:
        path, offset = _locate(tmp_path, target.record)
        original = path.read_bytes()
        before = snapshot(tmp_path)
        positions = range(len(target.record)) if target is targets[1] else [0, 4, 9, 13, 20, 40]
        for position in positions:
            damaged = bytearray(original)
            damaged[offset + position] ^= 0x5A
            path.write_bytes(bytes(damaged))
            with pytest.raises(CorruptRecordError) as info:
                WriteAheadLog.open(tmp_path)
            assert (info.value.path, info.value.offset) == (str(path), offset), position
            assert str(path) in str(info.value)
        path.write_bytes(original)
        assert snapshot(tmp_path) == before  # a refused open changes nothing


def test_truncate_corrupt_cuts_at_the_corruption_and_reports_everything_dropped(
    tmp_path: Path,
) -> None:
    appended = fill(tmp_path, [250] * 40, segment_bytes=4096)
    files = segment_files(tmp_path)
    path, offset = _locate(tmp_path, appended[5].record)
    assert path == files[0]
    damaged = bytearray(path.read_bytes())
    damaged[offset + 100] ^= 1
    path.write_bytes(bytes(damaged))
    with WriteAheadLog.open(tmp_path, truncate_corrupt=True) as wal:
        assert wal.last_lsn == appended[4].last_lsn
        dropped = wal.recovery.dropped
        assert (dropped[0].path, dropped[0].offset) == (str(path), offset)
        assert dropped[0].reason.startswith("corrupt record")
        assert [d.path for d in dropped[1:]] == [str(p) for p in files[1:]]
        assert wal.append(b"again", 1).first_lsn == appended[4].last_lsn + 1
    assert segment_files(tmp_path) == [files[0]]
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.recovery.clean and wal.last_lsn == appended[4].last_lsn + 1


def test_a_missing_segment_is_an_lsn_gap(tmp_path: Path) -> None:
    fill(tmp_path, [250] * 40, segment_bytes=4096)
    files = segment_files(tmp_path)
    files[1].unlink()
    with pytest.raises(CorruptRecordError, match="LSN gap") as info:
        WriteAheadLog.open(tmp_path)
    assert (info.value.path, info.value.offset) == (str(files[2]), 0)
    with WriteAheadLog.open(tmp_path, truncate_corrupt=True) as wal:
        assert wal.last_lsn == int(files[1].stem) - 1
        assert {d.path for d in wal.recovery.dropped} == {str(p) for p in files[2:]}
    assert segment_files(tmp_path) == files[:1]


def test_a_damaged_segment_header_is_refused(tmp_path: Path) -> None:
    fill(tmp_path, [250] * 40, segment_bytes=4096)
    files = segment_files(tmp_path)
    for victim in (files[1], files[0]):
        damaged = bytearray(victim.read_bytes())
        damaged[20] ^= 1  # inside the history id
        victim.write_bytes(bytes(damaged))
        with pytest.raises(CorruptRecordError, match="segment header") as info:
            WriteAheadLog.open(tmp_path)
        assert (info.value.path, info.value.offset) == (str(victim), 0)
    with pytest.raises(CorruptRecordError):  # no first header: no history to keep
        WriteAheadLog.open(tmp_path, truncate_corrupt=True)


def test_history_id_is_created_once_and_checked(tmp_path: Path) -> None:
    hid = bytes(range(16))
    with WriteAheadLog.open(tmp_path, history_id=hid) as wal:
        wal.append(b"x", 1)
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.history_id == hid
    with pytest.raises(HistoryMismatchError):
        WriteAheadLog.open(tmp_path, history_id=bytes(16))
    with WriteAheadLog.open(tmp_path / "other") as a, WriteAheadLog.open(tmp_path / "more") as b:
        assert len(a.history_id) == 16 and a.history_id != b.history_id


def test_unfinished_segment_creation_is_removed_and_reported(tmp_path: Path) -> None:
    fill(tmp_path, [100])
    stale = tmp_path / "00000000000000000002.wal.tmp"
    stale.write_bytes(b"partial")
    with WriteAheadLog.open(tmp_path) as wal:
        assert [(d.path, d.bytes_dropped) for d in wal.recovery.dropped] == [(str(stale), 7)]
    assert not stale.exists()


def test_an_unclosed_log_recovers_its_data_and_trims_preallocated_zeros(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    appended = [wal.append(payload(100, i), 1) for i in range(5)]
    (segment,) = segment_files(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / segment.name).write_bytes(segment.read_bytes())  # as a crash would leave it
    wal.close()
    assert (copy / segment.name).stat().st_size > wal.size_bytes
    with WriteAheadLog.open(copy) as recovered:
        assert recovered.recovery.clean
        assert list(recovered.read_from(1)) == [a.record for a in appended]
        assert recovered.size_bytes == SEGMENT_HEADER_BYTES + sum(len(a.record) for a in appended)


def test_a_flipped_byte_in_the_last_record_before_preallocated_zeros_is_corrupt(
    tmp_path: Path,
) -> None:
    appended = fill(tmp_path, [100, 700])
    (segment,) = segment_files(tmp_path)
    damaged = bytearray(segment.read_bytes() + bytes(8192))  # as the active segment looks
    offset = len(damaged) - 8192 - len(appended[-1].record)
    damaged[offset + 300] ^= 0x01
    segment.write_bytes(bytes(damaged))
    with pytest.raises(CorruptRecordError) as info:
        WriteAheadLog.open(tmp_path)
    assert (info.value.path, info.value.offset) == (str(segment), offset)


def test_corruption_found_while_reading_is_reported_with_file_and_offset(tmp_path: Path) -> None:
    appended = fill(tmp_path, [250] * 20, segment_bytes=4096)
    with WriteAheadLog.open(tmp_path, segment_bytes=4096) as wal:
        path, offset = _locate(tmp_path, appended[2].record)
        damaged = bytearray(path.read_bytes())
        damaged[offset + 100] ^= 1
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptRecordError) as info:
            list(wal.read_from(1))
        assert (info.value.path, info.value.offset) == (str(path), offset)
