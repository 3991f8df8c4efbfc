"""Which LSN was committed at a time: the WAL side of ``LsnAtTime`` (``tail --from-time``).

Every record's payload carries its primary's wall clock at commit (``commit_time_us``). Those
times are monotone within one primary's history, but a failover to a node whose clock is
behind steps them back, so "the earliest record at or after T" is not what a logarithmic
search can promise. The answer is defined by the search instead:

1. bisect the segments by their first record's commit time, then the hit segment's sparse
   index points (one per 16 KiB) by theirs: the *hit* is the last probe committed before T
   (the first probe if none is);
2. scan forward record by record from the hit, across later segments, and answer the first
   record committed at or after T (``None`` if the scan reaches the visible end first).

With monotone times that is the first such record in the WAL. Across a step back it is a
record at or after T whose predecessor is before T, from whichever run the bisection lands
in; ``None`` only if no record after the hit reaches T (T inside the older run's last
moments, which the newer clock has not reached yet). The cost is log2(segments) +
log2(points) single-record reads plus a scan of at most one index stride and a record,
whatever the times: the probe after the hit was read as committed at or after T, so the
scan stops there at the latest. So the node answers on its loop, as it does WalSync.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kevo_repl.adapters.wal_segments import (
    SEGMENT_HEADER_BYTES,
    SparseIndex,
    open_segment,
    read_records,
)
from kevo_repl.core.record import RECORD_HEADER_BYTES

__all__ = ["CommitTime", "SegmentPlan", "first_at_time"]

CommitTime = Callable[[memoryview], int]  # a record's payload -> its commit time (µs)
_NOT_YET: Final = 1 << 63  # a probe past the visible LSN sorts after every time


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One non-empty segment as the search reads it, copied under the log's lock."""

    path: Path
    index: SparseIndex  # append-only; only its first ``points`` entries are used
    points: int
    data_end: int


def first_at_time(
    plan: list[SegmentPlan], time_us: int, upto_lsn: int, commit_time: CommitTime
) -> tuple[int, int] | None:
    """``(first_lsn, commit_time_us)`` of the record found, or ``None`` when no record up to
    ``upto_lsn`` after the hit is committed at or after ``time_us``.

    ``FileNotFoundError`` when retention removed a segment meanwhile (plan again).
    """
    if not plan:
        return None
    reader = _Reader(commit_time, upto_lsn)
    try:
        seg = _last_before(
            len(plan), time_us, lambda i: reader.time_at(plan[i], plan[i].index.offset(0))
        )
        hit = plan[seg]
        point = _last_before(
            hit.points, time_us, lambda j: reader.time_at(hit, hit.index.offset(j))
        )
        return reader.scan(plan[seg:], hit.index.offset(point), time_us)
    finally:
        reader.close()


def _last_before(count: int, time_us: int, time_of: Callable[[int], int]) -> int:
    """The last probe committed before ``time_us`` (0 if none is): where the scan starts."""
    return max(0, bisect_left(range(count), time_us, key=time_of) - 1)


class _Reader:
    """Reads single records and runs of records, one descriptor per segment file."""

    def __init__(self, commit_time: CommitTime, upto_lsn: int) -> None:
        self._commit_time = commit_time
        self._upto = upto_lsn
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = open_segment(path)
            self._fds[path] = fd
        return fd

    def time_at(self, seg: SegmentPlan, offset: int) -> int:
        """Commit time of the record at ``offset``; records not yet visible sort last."""
        records = read_records(self._fd(seg.path), seg.path, offset, seg.data_end)
        found = next(records, None)
        if found is None or found[1] > self._upto:
            return _NOT_YET
        return self._commit_time(memoryview(found[2])[RECORD_HEADER_BYTES:])

    def scan(self, plan: list[SegmentPlan], offset: int, time_us: int) -> tuple[int, int] | None:
        """The first record from ``offset`` in ``plan[0]`` on committed at or after ``time_us``."""
        for i, seg in enumerate(plan):
            start = offset if i == 0 else SEGMENT_HEADER_BYTES
            records = read_records(self._fd(seg.path), seg.path, start, seg.data_end)
            for first_lsn, last_lsn, record in records:
                if last_lsn > self._upto:
                    return None
                committed = self._commit_time(memoryview(record)[RECORD_HEADER_BYTES:])
                if committed >= time_us:
                    return first_lsn, committed
        return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
