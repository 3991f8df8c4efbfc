"""Stream records that arrived past a gap, kept until WalSync fills the gap.

A PUB stream drops whole frames when a subscriber's queue is full: on a saturated link the
records after the hole still arrive. Dropping them and fetching everything from the hole on
by WalSync sends those bytes twice (measured: 258 bytes per entry on the wire instead of
206 at 50 Mbit/s, docs/benchmarks.md). So the follower keeps them here, asks WalSync for the
hole alone (``end_of_gap``), and applies them once the hole is filled, each through the same
checks as any record. Bounded in bytes: past the bound a record is dropped and fetched later,
as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AHEAD_MAX_BYTES", "StreamAhead"]

AHEAD_MAX_BYTES = 8 * 1024 * 1024  # per follower; the stream's frames are at most 256 KiB

Held = tuple[int, int, bytes, bytes]  # first LSN, last LSN, history, record bytes


@dataclass(slots=True)
class StreamAhead:
    max_bytes: int = AHEAD_MAX_BYTES
    _held: dict[int, Held] = field(default_factory=dict)  # by first LSN
    _bytes: int = 0

    def keep(self, first: int, last: int, history: bytes, record: bytes) -> bool:
        """Hold a record past the gap; False (not kept) when over the bound or held already."""
        if first in self._held or self._bytes + len(record) > self.max_bytes:
            return False
        self._held[first] = (first, last, history, record)
        self._bytes += len(record)
        return True

    def take(self, first: int) -> Held | None:
        """The held record starting at ``first`` (the next to apply), if any."""
        held = self._held.pop(first, None)
        if held is not None:
            self._bytes -= len(held[3])
        return held

    def end_of_gap(self, applied_lsn: int) -> int:
        """The last LSN WalSync must bring: the one before the first record held past
        ``applied_lsn`` (0: nothing held, no bound)."""
        firsts = [f for f in self._held if f > applied_lsn + 1]
        return min(firsts) - 1 if firsts else 0

    def prune(self, applied_lsn: int) -> None:
        """Forget what was applied meanwhile (WalSync brought it too)."""
        for first in [f for f, h in self._held.items() if h[0] <= applied_lsn]:
            self.take(first)

    def clear(self) -> None:
        self._held.clear()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._held)
