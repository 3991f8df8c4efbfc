"""Which WAL segments may go: the one retention rule, for the node and the simulator alike.

The WAL keeps what its followers still need, within bounds (PostgreSQL's replication slots
and ``max_slot_wal_keep_size``):

* never the active (last) segment;
* while the log is larger than ``max_size`` (the hard cap), the oldest segment goes whatever
  a follower needs: a dead or hopelessly slow follower cannot fill the disk, it bootstraps
  once instead;
* otherwise, while the log is larger than ``keep_size`` (the floor), the oldest segment goes
  only if it ends below ``needed_lsn``, the lowest LSN a known follower needs (its durable
  position + 1, or a bootstrap's snapshot LSN + 1 until it has caught up).

Sizes are in whatever unit the caller counts (bytes on the node, entries in the simulator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RetentionPlan", "SegmentSpan", "plan_retention"]


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    last_lsn: int
    size: int


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    drop: int  # how many of the oldest segments to drop
    held: bool  # a follower's need kept a segment the floor alone would have dropped
    capped: bool  # the hard cap dropped a segment a follower still needed


def plan_retention(
    segments: Sequence[SegmentSpan], needed_lsn: int | None, keep_size: int, max_size: int
) -> RetentionPlan:
    """The plan for ``segments`` (oldest first; the last one is active)."""
    total = sum(s.size for s in segments)
    drop = 0
    held = capped = False
    while drop < len(segments) - 1:
        oldest = segments[drop]
        needed = needed_lsn is not None and oldest.last_lsn >= needed_lsn
        if total > max_size:
            capped = capped or needed
        elif total > keep_size and not needed:
            pass
        else:
            held = total > keep_size and needed
            break
        total -= oldest.size
        drop += 1
    return RetentionPlan(drop, held, capped)
