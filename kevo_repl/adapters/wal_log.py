"""The WAL's segment list: what is on disk, how to read it, and how to trim it.

``WriteAheadLog`` (``wal_files.py``) appends and makes durable; this base class holds the
part readers and retention need: the segments in LSN order with their sizes and histories,
``read_from`` (WalSync, catch-up, replay), ``first_at_time`` (LsnAtTime) and dropping whole
oldest segments. One lock guards the list; reads copy a plan under it and read the files
without it, so a slow reader never blocks a writer, and a segment retention removes
meanwhile is reported as ``TooOld`` (a time lookup plans again).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path

from kevo_repl.adapters.wal_segments import (
    SEGMENT_HEADER_BYTES,
    Segment,
    fsync_dir,
    read_span,
)
from kevo_repl.adapters.wal_time import CommitTime, SegmentPlan, first_at_time
from kevo_repl.core.errors import StorageError, TooOldError
from kevo_repl.core.retention import SegmentSpan

__all__ = ["SegmentedLog"]

_REPLANS = 8  # searches restarted because retention removed a segment under them


class SegmentedLog:
    """Segments oldest first; the last one is active (being written)."""

    def __init__(self, directory: Path, segments: list[Segment]) -> None:
        self._dir = directory
        self._segments = segments
        self._first_lsns = [s.first_lsn for s in segments]
        self._size_bytes = sum(s.data_end for s in segments)
        self._last_lsn = segments[-1].last_lsn
        self._lock = threading.Lock()  # the write lock: LSNs, files, segment list
        self._retain_lock = threading.Lock()

    def _check_usable(self) -> None:
        """Raise if the log may not be used (closed, failed): the writer's business."""

    @property
    def retained_from_lsn(self) -> int:
        """First LSN ``read_from`` can still return (``last_lsn + 1`` if none is kept)."""
        return self._first_lsns[0]

    @property
    def size_bytes(self) -> int:
        """Segment headers and records on disk, not counting preallocated zeros."""
        return self._size_bytes

    def segment_histories(self) -> list[tuple[int, bytes]]:
        """``(first_lsn, history_id)`` of every segment, oldest first."""
        with self._lock:
            return [(s.first_lsn, s.history_id) for s in self._segments]

    def read_from(self, lsn: int, max_bytes: int | None = None) -> Iterator[bytes]:
        """Stored records of every batch with ``last_lsn >= lsn``, in order, from the one
        holding ``lsn``.

        Stops before exceeding ``max_bytes`` but always yields at least one record if any.
        Only records complete when called are returned. Raises ``TooOldError`` (now, not on
        iteration) if ``lsn < retained_from_lsn``, and during iteration if retention removes
        a segment before it is opened.
        """
        if lsn < 1:
            raise ValueError(f"LSNs start at 1, got {lsn}")
        with self._lock:
            self._check_usable()
            if lsn < self._first_lsns[0]:
                raise TooOldError(lsn, self._first_lsns[0])
            if lsn > self._last_lsn:
                return iter(())
            i = bisect_right(self._first_lsns, lsn) - 1
            start = self._segments[i].index.start_offset(lsn)
            plan = [(s.path, SEGMENT_HEADER_BYTES, s.data_end) for s in self._segments[i:]]
            plan[0] = (plan[0][0], start, plan[0][2])
        return self._read_plan(plan, lsn, max_bytes)

    def _read_plan(
        self, plan: list[tuple[Path, int, int]], lsn: int, max_bytes: int | None
    ) -> Iterator[bytes]:
        try:
            yield from read_span(plan, lsn, max_bytes)
        except FileNotFoundError:  # retention removed a segment before it was opened
            raise TooOldError(lsn, self.retained_from_lsn) from None

    def first_at_time(
        self, time_us: int, upto_lsn: int, commit_time: CommitTime
    ) -> tuple[int, int] | None:
        """``(first_lsn, commit_time_us)`` of the first record up to ``upto_lsn`` committed
        at or after ``time_us``, as ``wal_time`` defines it (commit times may step back
        across a failover); ``None`` when none is. ``commit_time`` reads a payload's time."""
        for _ in range(_REPLANS):
            with self._lock:
                self._check_usable()
                plan = [
                    SegmentPlan(s.path, s.index, len(s.index), s.data_end)
                    for s in self._segments
                    if s.first_lsn <= min(s.last_lsn, upto_lsn)
                ]
            try:
                return first_at_time(plan, time_us, upto_lsn, commit_time)
            except FileNotFoundError:  # retention removed a segment: plan from the new oldest
                continue
        raise StorageError(f"WAL in {self._dir}: segments kept vanishing during a time lookup")

    def spans(self) -> list[SegmentSpan]:
        """Every segment's last LSN and size, oldest first (the last is the active one):
        what ``kevo_repl.core.retention.plan_retention`` decides on."""
        with self._lock:
            return [SegmentSpan(s.last_lsn, s.data_end) for s in self._segments]

    def drop_oldest(self, count: int) -> int:
        """Drop the ``count`` oldest segments (never the active one); ``retained_from_lsn``."""
        with self._retain_lock:
            with self._lock:
                self._check_usable()
                drop: list[Segment] = []
                while len(self._segments) > 1 and len(drop) < count:
                    drop.append(self._pop_oldest())
                retained = self._first_lsns[0]
            self._unlink(drop)
        return retained

    def retain(self, keep_from_lsn: int, max_bytes: int | None = None) -> int:
        """Drop whole segments wholly below ``keep_from_lsn``, then the oldest ones while the
        log exceeds ``max_bytes``; never the active segment. Returns ``retained_from_lsn``."""
        with self._retain_lock:
            with self._lock:
                self._check_usable()
                drop: list[Segment] = []
                while len(self._segments) > 1 and (
                    self._segments[1].first_lsn <= keep_from_lsn
                    or (max_bytes is not None and self._size_bytes > max_bytes)
                ):
                    drop.append(self._pop_oldest())
                retained = self._first_lsns[0]
            self._unlink(drop)
        return retained

    def _pop_oldest(self) -> Segment:
        seg = self._segments.pop(0)
        self._first_lsns.pop(0)
        self._size_bytes -= seg.data_end
        return seg

    def _unlink(self, drop: list[Segment]) -> None:
        for seg in drop:  # oldest first, each durable, so no crash leaves an LSN gap
            try:
                seg.path.unlink()
                fsync_dir(self._dir)
            except OSError as exc:
                raise StorageError(f"removing WAL segment {seg.path}: {exc}") from exc
