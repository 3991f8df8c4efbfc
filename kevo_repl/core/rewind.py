"""Rewinding a diverged tail instead of copying everything (the pg_rewind idea).

A node whose records past LSN F are on another branch (an old primary after a failover)
knows from its own WAL which keys that tail touched. It asks its upstream for their current
values, each batch read at some snapshot LSN S_i >= F, and writes them into its store in one
transaction with ``applied_lsn = F``. Then it catches up from F + 1 as usual. That ends at
the upstream's exact state: a key copied at S_i gets every later write replayed over it, a
key the tail did not touch still had its value at F, and the replay sets each key to the
last write at or below the point it reaches. So the node is consistent again (and may be
served) only once it has applied past ``max(S_i)``. Bounded: past ``max_keys`` keys or
``max_bytes`` of values a full bootstrap is cheaper and simpler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_REWIND_BYTES", "MAX_REWIND_KEYS", "REWIND_BATCH_KEYS", "RewindReceiver"]

MAX_REWIND_KEYS = 10_000
MAX_REWIND_BYTES = 64 * 1024 * 1024
REWIND_BATCH_KEYS = 256


@dataclass(slots=True)
class RewindReceiver:
    shared_lsn: int  # F: where our line and the upstream's part
    reason: str
    keys: list[bytes] = field(default_factory=list)  # still to fetch, sorted
    puts: list[tuple[bytes, bytes | None]] = field(default_factory=list)  # fetched
    bytes_fetched: int = 0
    snapshot_lsn: int = 0  # max(S_i): consistent again once applied past it
    asked: list[bytes] = field(default_factory=list)  # the batch in flight

    def next_batch(self) -> list[bytes]:
        self.asked = self.keys[:REWIND_BATCH_KEYS]
        return self.asked

    def accept(
        self, snapshot_lsn: int, keys: list[bytes], values: list[bytes], found: list[bool]
    ) -> bool:
        """Take an answer for (a prefix of) the batch asked; False if it is not one, or the
        values outgrow the bound (then bootstrap instead)."""
        if (
            not keys
            or keys != self.asked[: len(keys)]
            or not len(keys) == len(values) == len(found)
        ):
            return False
        if snapshot_lsn < self.shared_lsn:
            return False  # the upstream must be at or past the fork: it has every key's value
        for key, value, present in zip(keys, values, found, strict=True):
            self.puts.append((key, value if present else None))
            self.bytes_fetched += len(key) + len(value)
        del self.keys[: len(keys)]
        self.snapshot_lsn = max(self.snapshot_lsn, snapshot_lsn)
        return self.bytes_fetched <= MAX_REWIND_BYTES

    @property
    def done(self) -> bool:
        return not self.keys
