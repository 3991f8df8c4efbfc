"""A node's write-ahead log: segment files, group commit, rotation, retention.

The WAL is every node's durability point (a primary's sealed writes, a replica's received
records, byte for byte). ``append`` assigns LSNs, writes one record
(``kevo_repl.core.record``) and, with ``FsyncPolicy.ALWAYS``, returns once an fdatasync covers
it. Concurrent appenders share fdatasyncs (group commit): the first waiter becomes the leader
and syncs everything written so far, the others wait on a condition variable; nobody holds
the write lock while syncing, so writers keep filling the next group.

Segments are zero-filled ahead of the write position in ``PREALLOC_BYTES`` steps, so most
fdatasyncs journal no size change (about 2x the fdatasyncs/s, docs/benchmarks.md). A full
segment is truncated to its data, synced and sealed before the next one is created (under
the write lock, once per segment), so only the last segment can ever hold a torn tail.

After an IO error the log refuses all further work (``StorageError``): a failed fdatasync
may have lost data that a retry would wrongly report durable. Reopen to recover.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Final

from kevo_repl.adapters.wal_log import SegmentedLog
from kevo_repl.adapters.wal_recovery import RecoveryReport, recover
from kevo_repl.adapters.wal_segments import (
    SEGMENT_HEADER_BYTES,
    Segment,
    create_segment,
    open_for_append,
)
from kevo_repl.adapters.wal_types import Appended, FsyncPolicy, WalStats
from kevo_repl.core.errors import KevoError, StorageError
from kevo_repl.core.record import encode_record, peek_lsns

__all__ = ["Appended", "FsyncPolicy", "RecoveryReport", "WalStats", "WriteAheadLog"]

PREALLOC_BYTES = 4 * 1024 * 1024  # zero-fill step; not Final so bench.wal_bench can A/B it
_ZEROS: Final = bytes(1024 * 1024)


class WriteAheadLog(SegmentedLog):
    """Segmented, crash-safe, thread-safe WAL. Build it with ``WriteAheadLog.open``."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy,
        segment_bytes: int,
        fsync_interval_ms: int,
        truncate_corrupt: bool,
        history_id: bytes | None,
        sync_log: Path | None = None,
        first_lsn: int = 1,
    ) -> None:
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if fsync_interval_ms < 1:
            raise ValueError("fsync_interval_ms must be at least 1")
        recovered = recover(
            directory,
            history_id=history_id,
            truncate_corrupt=truncate_corrupt,
            first_lsn=first_lsn,
        )
        self._policy = FsyncPolicy(fsync)
        self._segment_bytes = segment_bytes
        self._history_id = recovered.history_id
        self._recovery = recovered.report
        super().__init__(directory, recovered.segments)
        active = self._segments[-1]
        self._last_lsn = active.last_lsn
        self._fd, self._file_bytes = open_for_append(active.path)  # also fdatasyncs it
        self._cond = threading.Condition(threading.Lock())  # group commit state
        self._syncing = False
        self._durable_lsn = self._last_lsn
        self._failure: StorageError | None = None
        self._closed = False
        self._appends = self._rotations = self._bytes_written = 0
        self._group_syncs = self._seal_syncs = 0
        self._sync_log = sync_log
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self._policy is FsyncPolicy.INTERVAL:
            self._syncer = threading.Thread(
                target=self._sync_every,
                args=(fsync_interval_ms / 1000,),
                name=f"wal-fsync-{directory.name}",
                daemon=True,
            )
            self._syncer.start()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync_interval_ms: int = 50,
        truncate_corrupt: bool = False,
        history_id: bytes | None = None,
        sync_log: Path | None = None,
        first_lsn: int = 1,
    ) -> WriteAheadLog:
        """Open (recovering) or initialise the WAL in ``directory``.

        ``sync_log`` (fault tests only) gets a line ``SEGMENT OFFSET LSN`` after every
        fdatasync: what a power loss at that moment would leave, so a test can cut the WAL
        exactly there after a SIGKILL.

        Raises ``CorruptRecordError`` on corruption before the tail (unless
        ``truncate_corrupt``), ``HistoryMismatchError`` if ``history_id`` differs from the
        stored one, ``StorageError`` on IO errors.
        """
        return cls(
            Path(directory),
            fsync=fsync,
            segment_bytes=segment_bytes,
            fsync_interval_ms=fsync_interval_ms,
            truncate_corrupt=truncate_corrupt,
            history_id=history_id,
            sync_log=sync_log,
            first_lsn=first_lsn,
        )

    @property
    def history_id(self) -> bytes:
        """The newest segment's history: what the next record written belongs to."""
        return self._history_id

    @property
    def failed(self) -> bool:
        """True after an IO error: the log refuses all work until reopened."""
        return self._failure is not None

    @property
    def last_lsn(self) -> int:
        """LSN of the last written entry; 0 if nothing was ever written."""
        return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        """Every entry up to here is on disk (covered by an fdatasync)."""
        return self._durable_lsn

    @property
    def recovery(self) -> RecoveryReport:
        return self._recovery

    @property
    def stats(self) -> WalStats:
        return WalStats(
            self._appends,
            self._group_syncs + self._seal_syncs,
            self._rotations,
            self._bytes_written,
        )

    def append(self, payload: bytes, count: int) -> Appended:
        """Write a batch of ``count`` entries; durable on return with ``FsyncPolicy.ALWAYS``."""
        appended = self.write(payload, count)
        if self._policy is FsyncPolicy.ALWAYS:
            self._sync_to(appended.last_lsn)
        return appended

    def write(self, payload: bytes, count: int) -> Appended:
        """Write a batch to the file without syncing; pair with ``sync()``."""
        if count < 1:
            raise ValueError(f"a batch holds at least one entry, got count={count}")
        with self._lock:
            self._check_usable()
            first_lsn = self._last_lsn + 1
            last_lsn = first_lsn + count - 1
            record = encode_record(first_lsn, last_lsn, payload)
            return self._write_record(record, first_lsn, last_lsn)

    def append_record(self, record: bytes, history_id: bytes) -> Appended:
        """Write a record received whole from an upstream, byte for byte (a follower's WAL);
        it must continue the log (``first_lsn == last_lsn + 1``). A record of another history
        than the active segment's starts a new segment (``switch_history``)."""
        first_lsn, last_lsn = peek_lsns(record)
        with self._lock:
            self._check_usable()
            if first_lsn != self._last_lsn + 1:
                raise StorageError(
                    f"WAL in {self._dir}: record {first_lsn}..{last_lsn} does not follow "
                    f"LSN {self._last_lsn}"
                )
            if history_id != self._history_id:
                self._switch_history(history_id)
            return self._write_record(record, first_lsn, last_lsn)

    def switch_history(self, history_id: bytes) -> None:
        """Records from now on belong to ``history_id`` (a promotion, or an upstream's new
        history): the active segment is sealed and a new one carries the new id."""
        with self._lock:
            self._check_usable()
            if history_id != self._history_id:
                self._switch_history(history_id)

    def _switch_history(self, history_id: bytes) -> None:
        if any(s.history_id == history_id for s in self._segments):
            raise StorageError(f"WAL in {self._dir}: history {history_id.hex()} was left before")
        seg = self._segments[-1]
        if seg.last_lsn < seg.first_lsn:  # empty: give it the new header in place
            try:
                path = create_segment(self._dir, seg.first_lsn, history_id)
                fd, size = open_for_append(path)  # the old descriptor is of the replaced file
                os.close(self._fd)
            except (OSError, StorageError) as exc:
                raise self._fail(str(exc)) from exc
            self._fd, self._file_bytes = fd, size
            seg.history_id = history_id
            self._history_id = history_id
            return
        self._history_id = history_id
        self._rotate()

    def _write_record(self, record: bytes, first_lsn: int, last_lsn: int) -> Appended:
        """Append ``record`` to the active segment (caller holds the write lock)."""
        seg = self._segments[-1]
        if seg.data_end + len(record) > self._segment_bytes and seg.last_lsn >= seg.first_lsn:
            seg = self._rotate()
        offset, end = seg.data_end, seg.data_end + len(record)
        try:
            if end > self._file_bytes:
                self._preallocate(end)
            written = os.pwrite(self._fd, record, offset)
            while written < len(record):
                written += os.pwrite(self._fd, record[written:], offset + written)
        except OSError as exc:
            raise self._fail(f"writing {seg.path}: {exc}") from exc
        seg.index.note(first_lsn, offset)
        seg.data_end = end
        seg.last_lsn = self._last_lsn = last_lsn
        self._size_bytes += len(record)
        self._appends += 1
        self._bytes_written += len(record)
        return Appended(first_lsn, last_lsn, record)

    def sync(self) -> int:
        """Make everything written so far durable (group-committed); returns ``durable_lsn``."""
        return self._sync_to(self._last_lsn)

    def _sync_to(self, target_lsn: int) -> int:
        with self._cond:
            while self._durable_lsn < target_lsn:
                if self._failure is not None:
                    raise self._failure
                if not self._syncing:
                    self._syncing = True
                    break
                self._cond.wait()
            else:
                return self._durable_lsn
        synced_lsn = -1
        try:
            with self._lock:  # held only to pick what to sync, never across the fdatasync
                self._check_usable()
                upto, path, end = (
                    self._last_lsn,
                    self._segments[-1].path,
                    self._segments[-1].data_end,
                )
                try:
                    fd = os.dup(self._fd)  # rotation may close self._fd meanwhile
                except OSError as exc:
                    raise self._fail(f"syncing {path}: {exc}") from exc
            try:
                os.fdatasync(fd)
            except OSError as exc:
                with self._lock:
                    raise self._fail(f"fdatasync {path}: {exc}") from exc
            finally:
                os.close(fd)
            synced_lsn = upto
            if self._sync_log is not None:
                with self._sync_log.open("a") as f:
                    f.write(f"{path.name} {end} {upto}\n")
        finally:
            with self._cond:
                self._syncing = False
                if synced_lsn >= 0:
                    self._durable_lsn = max(self._durable_lsn, synced_lsn)
                    self._group_syncs += 1
                self._cond.notify_all()
        return self._durable_lsn

    def _sync_every(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            if self._durable_lsn < self._last_lsn:
                try:
                    self.sync()
                except KevoError:
                    return  # recorded in self._failure; writers see it

    def _preallocate(self, end: int) -> None:
        """Zero-fill the active file up to at least ``end`` (caller holds the write lock)."""
        target = max(end, min(self._file_bytes + PREALLOC_BYTES, self._segment_bytes))
        pos = self._file_bytes
        while pos < target:
            pos += os.pwrite(self._fd, _ZEROS[: min(len(_ZEROS), target - pos)], pos)
        self._file_bytes = pos

    def _rotate(self) -> Segment:
        """Seal the active segment (truncate to data, sync) and start the next one."""
        old = self._segments[-1]
        try:
            os.ftruncate(self._fd, old.data_end)
            os.fdatasync(self._fd)
            self._seal_syncs += 1
            path = create_segment(self._dir, self._last_lsn + 1, self._history_id)
            fd, size = open_for_append(path)
            os.close(self._fd)
        except (OSError, StorageError) as exc:
            raise self._fail(f"rotating after {old.path}: {exc}") from exc
        self._fd, self._file_bytes = fd, size
        with self._cond:
            self._durable_lsn = max(self._durable_lsn, old.last_lsn)
        seg = Segment(
            path,
            self._last_lsn + 1,
            self._last_lsn,
            SEGMENT_HEADER_BYTES,
            history_id=self._history_id,
        )
        self._segments.append(seg)
        self._first_lsns.append(seg.first_lsn)
        self._size_bytes += SEGMENT_HEADER_BYTES
        self._rotations += 1
        return seg

    def close(self) -> None:
        """Stop the interval syncer, sync, trim preallocated zeros and close. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        try:
            if self._failure is None:
                self.sync()
                with self._lock:
                    try:
                        os.ftruncate(self._fd, self._segments[-1].data_end)
                        os.fdatasync(self._fd)
                    except OSError as exc:
                        raise self._fail(f"closing {self._segments[-1].path}: {exc}") from exc
        finally:
            with self._lock:
                self._closed = True
                try:
                    os.close(self._fd)
                except OSError as exc:
                    raise StorageError(f"closing WAL in {self._dir}: {exc}") from exc

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"WAL in {self._dir} is closed")
        if self._failure is not None:
            raise self._failure

    def _fail(self, message: str) -> StorageError:
        """Remember the first IO failure; every later call raises it (caller holds the lock)."""
        if self._failure is None:
            self._failure = StorageError(message)
        with self._cond:
            self._cond.notify_all()
        return self._failure
