"""When each commit group happened on this node, and how many record bytes it carried.

The basis of every lag in time and of the followers' bytes/s (``Registry``). A node's own
clock only: a follower's position is turned into time by looking up when this node
committed it, so no two clocks are ever compared. Memory is bounded: entries below every
follower's position are dropped (``drop_through``), and past ``max_entries`` the older half
goes, which only makes the lag of a follower that far behind read as the oldest time kept.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["CommitTimes"]


@dataclass(slots=True)
class CommitTimes:
    max_entries: int = 200_000
    _lsns: list[int] = field(default_factory=list)  # last LSN of each group, ascending
    _ms: list[int] = field(default_factory=list)
    _bytes: list[int] = field(default_factory=list)  # record bytes up to each group
    _bytes_base: int = 0  # record bytes up to the last dropped group

    def note(self, last_lsn: int, now_ms: int, nbytes: int) -> None:
        self._lsns.append(last_lsn)
        self._ms.append(now_ms)
        self._bytes.append((self._bytes[-1] if self._bytes else self._bytes_base) + nbytes)
        if len(self._lsns) > self.max_entries:
            self._drop(len(self._lsns) - self.max_entries // 2)

    def age_past(self, position: int, now_ms: int) -> int:
        """Age in ms of the oldest commit past ``position`` (0 when there is none)."""
        if not self._lsns or position >= self._lsns[-1]:
            return 0
        i = min(bisect.bisect_right(self._lsns, position), len(self._ms) - 1)
        return max(0, now_ms - self._ms[i])

    def delay_to(self, old: int, new: int, now_ms: int) -> int | None:
        """How long ago the latest commit in ``(old, new]`` happened (None: there is none):
        measured when a follower reports ``new``, the time that commit took to reach it."""
        i = bisect.bisect_right(self._lsns, new) - 1
        if i < 0 or self._lsns[i] <= old:
            return None
        return max(0, now_ms - self._ms[i])

    def bytes_at(self, lsn: int) -> int:
        """Record bytes committed up to ``lsn`` (to the group boundary at or below it)."""
        i = bisect.bisect_right(self._lsns, lsn)
        return self._bytes[i - 1] if i else self._bytes_base

    def drop_through(self, floor: int) -> None:
        """Forget groups at or below ``floor`` (no follower needs them), in large steps."""
        i = bisect.bisect_right(self._lsns, floor)
        if i > 1024:
            self._drop(i)

    def _drop(self, n: int) -> None:
        self._bytes_base = self._bytes[n - 1]
        del self._lsns[:n]
        del self._ms[:n]
        del self._bytes[:n]
