"""Open-time recovery of a WAL directory: check every segment, truncate a torn tail, report.

Rules (see ``wal_segments`` for the torn-versus-corrupt rule inside one segment):

* every segment's header must be intact, carry a history id (a history, once left for the
  next one at a segment boundary, never comes back) and the first LSN of its
  name, and start right after the previous segment's last LSN (LSN continuity);
* a torn tail of the last segment is truncated and reported;
* anything else is corruption: ``CorruptRecordError`` naming the file and offset, unless
  ``truncate_corrupt`` is set, in which case the log is cut there, later segments are
  removed and everything dropped is reported. Nothing is skipped silently.

All checks run before any file is changed, so a refused open leaves the directory untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kevo_repl.adapters.wal_segments import (
    HISTORY_ID_BYTES,
    SEGMENT_HEADER_BYTES,
    Segment,
    create_segment,
    decode_segment_header,
    fsync_dir,
    parse_segment_name,
    scan_segment,
)
from kevo_repl.core.errors import (
    BadRecordError,
    CorruptRecordError,
    HistoryMismatchError,
    StorageError,
)

__all__ = ["Dropped", "Recovered", "RecoveryReport", "recover"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bytes recovery removed: a torn tail, a corrupt suffix, or a whole file."""

    path: str
    offset: int
    bytes_dropped: int
    reason: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``WriteAheadLog.open`` found, for the caller to log."""

    segments: int
    records: int
    last_lsn: int
    dropped: tuple[Dropped, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.dropped


@dataclass(frozen=True, slots=True)
class Recovered:
    history_id: bytes
    segments: list[Segment]
    report: RecoveryReport


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StorageError(f"reading WAL segment {path}: {exc}") from exc


def _file_drops(paths: list[Path], reason: str) -> list[Dropped]:
    try:
        return [Dropped(str(p), 0, p.stat().st_size, reason) for p in paths]
    except OSError as exc:
        raise StorageError(f"WAL file vanished during recovery: {exc}") from exc


def recover(
    directory: Path, *, history_id: bytes | None, truncate_corrupt: bool, first_lsn: int = 1
) -> Recovered:
    """Recover (or initialise) the WAL in ``directory``; see the module docstring.

    A new log gets ``history_id`` (random if None) and starts at ``first_lsn`` (after a
    snapshot, a follower's log starts past it). An existing one must be of ``history_id``
    now (its newest segment's), if given."""
    if history_id is not None and len(history_id) != HISTORY_ID_BYTES:
        raise ValueError(f"history_id must be {HISTORY_ID_BYTES} bytes")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        names = os.listdir(directory)
    except OSError as exc:
        raise StorageError(f"WAL directory {directory}: {exc}") from exc
    stale = sorted(directory / n for n in names if n.endswith(".wal.tmp"))
    dropped = _file_drops(stale, "unfinished segment creation")
    paths = [directory / n for n in sorted(n for n in names if parse_segment_name(n))]
    if not paths:
        hid = history_id if history_id is not None else os.urandom(HISTORY_ID_BYTES)
        _apply(directory, stale, None)
        path = create_segment(directory, first_lsn, hid)
        segment = Segment(path, first_lsn, first_lsn - 1, SEGMENT_HEADER_BYTES, history_id=hid)
        report = RecoveryReport(1, 0, first_lsn - 1, tuple(dropped))
        return Recovered(hid, [segment], report)

    segments: list[Segment] = []
    file_size = 0
    cut_at: int | None = None
    left: set[bytes] = set()  # histories the log moved on from
    records = 0
    removed: list[Path] = []
    for i, path in enumerate(paths):
        buf = _read(path)
        file_size = len(buf)
        problem: tuple[int, str] | None = None
        try:
            hid, first_lsn = decode_segment_header(buf)
        except BadRecordError as exc:
            if i == 0:  # without a first header there is no history to keep
                raise CorruptRecordError(str(path), 0, exc.reason) from exc
            problem = (0, f"bad segment header: {exc.reason}")
        else:
            expected_first = segments[-1].last_lsn + 1 if segments else first_lsn
            if hid in left:
                problem = (0, f"segment of history {hid.hex()}, which the log had left")
            elif first_lsn != parse_segment_name(path.name):
                problem = (0, f"header says first LSN {first_lsn}, the file name does not")
            elif first_lsn != expected_first:
                problem = (0, f"LSN gap: segment starts at {first_lsn}, expected {expected_first}")
        if problem is not None:  # a whole segment is unusable: drop it and the rest
            if not truncate_corrupt:
                raise CorruptRecordError(str(path), *problem)
            dropped += _file_drops(paths[i:], f"corrupt segment: {problem[1]}")
            removed += paths[i:]
            file_size = -1  # re-check the new last segment's size below
            break
        scan = scan_segment(buf, first_lsn, is_last=i == len(paths) - 1)
        records += scan.records
        if segments and hid != segments[-1].history_id:
            left.add(segments[-1].history_id)
        segments.append(
            Segment(path, first_lsn, scan.last_lsn, scan.data_end, scan.index, history_id=hid)
        )
        failure = scan.failure
        if failure is not None:
            if not failure.torn and not truncate_corrupt:
                raise CorruptRecordError(str(path), failure.offset, failure.reason)
            kind = "torn tail" if failure.torn else "corrupt record"
            dropped.append(
                Dropped(
                    str(path), failure.offset, failure.bytes_dropped, f"{kind}: {failure.reason}"
                )
            )
            dropped += _file_drops(paths[i + 1 :], f"after the {kind} in {path.name}")
            removed += paths[i + 1 :]
            cut_at = failure.offset
            break

    last = segments[-1]
    if history_id is not None and history_id != last.history_id:
        raise HistoryMismatchError(
            f"WAL in {directory} has history {last.history_id.hex()}, expected {history_id.hex()}"
        )
    if cut_at is None and file_size != last.data_end:
        cut_at = last.data_end  # trailing preallocated zeros: not data, not reported
    _apply(directory, stale + removed, None if cut_at is None else (last.path, cut_at))
    report = RecoveryReport(len(segments), records, last.last_lsn, tuple(dropped))
    return Recovered(last.history_id, segments, report)  # the current history


def _apply(directory: Path, remove: list[Path], cut: tuple[Path, int] | None) -> None:
    """Make the decided changes durable: truncate the last kept segment, remove files.

    Newest files go first, so an interrupted recovery leaves at most a suffix of them, which
    the next open finds and handles the same way.
    """
    try:
        for path in sorted(remove, reverse=True):
            path.unlink()
        if remove:
            fsync_dir(directory)
        if cut is not None:
            path, offset = cut
            fd = os.open(path, os.O_RDWR)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise StorageError(f"recovering WAL in {directory}: {exc}") from exc
