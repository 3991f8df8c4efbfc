"""Simulated disks: what survives a crash on a replica and on the primary.

- ``ReplicaStore`` models the LMDB state store: a batch applies atomically (data, applied LSN
  and history in one transaction) but commits do not sync, so a crash (power loss) reverts
  the store to its last checkpoint, the *durable* prefix. A bootstrap builds a separate store
  and installs it synced, all at once. Storage can fail on demand (full disk, IO error).
- ``PrimaryWal`` models the WAL with ``fsync=always``: appended batches are unsynced until a
  group commit syncs them, and only synced batches are committed (applied, published,
  acknowledged). A crash loses an arbitrary suffix of the unsynced tail (a torn tail is
  truncated); what survives is recovered as committed. The history id is kept. Retention
  drops whole oldest segments as ``core.retention`` plans it, as the node does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kevo_repl.core.errors import StorageError
from kevo_repl.core.retention import SegmentSpan
from kevo_repl.testing.messages import Entry, encode_record

__all__ = ["Batch", "PrimaryWal", "ReplicaStore"]


@dataclass(frozen=True, slots=True)
class Batch:
    first_lsn: int
    last_lsn: int
    history_id: bytes
    entries: tuple[Entry, ...]
    record: bytes


def apply_entries(state: dict[bytes, bytes], entries: tuple[Entry, ...]) -> None:
    for op, key, value in entries:
        if op == 1:
            state[key] = value
        else:
            state.pop(key, None)


class ReplicaStore:
    """A replica's state store with a visible (applied) and a durable (checkpointed) prefix."""

    def __init__(
        self, rng: random.Random, fail_rate: float = 0.0, boot_fail_rate: float = 0.0
    ) -> None:
        self.rng = rng
        self.fail_rate = fail_rate
        self.boot_fail_rate = boot_fail_rate  # a bootstrap writes a second full copy: disk full
        self.state: dict[bytes, bytes] = {}
        self.applied_lsn = 0
        self.history_id = b""
        self.durable_state: dict[bytes, bytes] = {}
        self.durable_lsn = 0
        self.durable_history = b""
        self.boot: dict[bytes, bytes] | None = None
        self.failures = 0

    def seed(self, state: dict[bytes, bytes], lsn: int, history_id: bytes) -> None:
        """Start from an existing (durable) store, e.g. one of another history."""
        self.state, self.applied_lsn, self.history_id = dict(state), lsn, history_id
        self.sync()

    def apply(self, last_lsn: int, history_id: bytes, entries: tuple[Entry, ...]) -> None:
        self._maybe_fail("apply")
        apply_entries(self.state, entries)
        self.applied_lsn = last_lsn
        self.history_id = history_id

    def begin_bootstrap(self) -> None:
        self.boot = {}

    def write_chunk(self, keys: list[bytes], values: list[bytes]) -> None:
        if self.boot is None:
            raise StorageError("bootstrap chunk without a bootstrap store")
        self._maybe_fail("bootstrap write", self.boot_fail_rate)
        self.boot.update(zip(keys, values, strict=True))

    def install(self, snapshot_lsn: int, history_id: bytes) -> None:
        """Swap the finished bootstrap store in; it was synced before the rename."""
        if self.boot is None:
            raise StorageError("install without a bootstrap store")
        self._maybe_fail("bootstrap install", self.boot_fail_rate)
        self.state, self.boot = self.boot, None
        self.applied_lsn, self.history_id = snapshot_lsn, history_id
        self.sync()

    def sync(self) -> int:
        """Checkpoint: everything applied becomes durable. Returns the durable LSN."""
        self.durable_state = dict(self.state)
        self.durable_lsn, self.durable_history = self.applied_lsn, self.history_id
        return self.durable_lsn

    def crash(self) -> None:
        """Power loss: unsynced commits and any unfinished bootstrap store are gone."""
        self.state = dict(self.durable_state)
        self.applied_lsn, self.history_id = self.durable_lsn, self.durable_history
        self.boot = None

    def _maybe_fail(self, what: str, rate: float | None = None) -> None:
        rate = self.fail_rate if rate is None else rate
        if rate and self.rng.random() < rate:
            self.failures += 1
            raise StorageError(f"simulated {what} failure")


class PrimaryWal:
    """Segments of batches; a synced (committed) prefix and an unsynced tail."""

    def __init__(self, history_id: bytes, segment_entries: int) -> None:
        self.history_id = history_id
        self.segment_entries = segment_entries
        self.segments: list[list[Batch]] = [[]]
        self.unsynced: list[Batch] = []
        self.synced_lsn = 0
        self.next_lsn = 1
        self.held_entries = 0
        self._segment_fill = 0

    @property
    def last_lsn(self) -> int:
        """Last committed LSN: what the primary publishes, serves and acknowledges."""
        return self.synced_lsn

    @property
    def retained_from(self) -> int:
        for segment in self.segments:
            if segment:
                return segment[0].first_lsn
        return self.synced_lsn + 1

    def append(self, entries: tuple[Entry, ...]) -> Batch:
        first = self.next_lsn
        last = first + len(entries) - 1
        self.next_lsn = last + 1
        batch = Batch(
            first,
            last,
            self.history_id,
            entries,
            encode_record(first, last, self.history_id, entries),
        )
        self.unsynced.append(batch)
        return batch

    def sync(self) -> list[Batch]:
        """Group commit: one fsync makes the whole unsynced tail durable."""
        done, self.unsynced = self.unsynced, []
        for batch in done:
            self._keep(batch)
        return done

    def crash(self, rng: random.Random) -> list[Batch]:
        """Lose a random suffix of the unsynced tail; the surviving prefix is recovered."""
        kept = self.unsynced[: rng.randint(0, len(self.unsynced))]
        self.unsynced = []
        for batch in kept:
            self._keep(batch)
        self.next_lsn = self.synced_lsn + 1
        return kept

    def read(self, from_lsn: int, max_bytes: int, max_count: int) -> list[Batch]:
        """Committed batches from the one holding ``from_lsn``: at least one, then by size."""
        out: list[Batch] = []
        size = 0
        for segment in self.segments:
            if not segment or segment[-1].last_lsn < from_lsn:
                continue
            for batch in segment:
                if batch.last_lsn < from_lsn:
                    continue
                if out and (size + len(batch.record) > max_bytes or len(out) >= max_count):
                    return out
                out.append(batch)
                size += len(batch.record)
        return out

    def spans(self) -> list[SegmentSpan]:
        """Each segment's last LSN and size in entries, oldest first (as the WAL's)."""
        out = []
        for segment in self.segments:
            size = sum(b.last_lsn - b.first_lsn + 1 for b in segment)
            out.append(SegmentSpan(segment[-1].last_lsn if segment else self.synced_lsn, size))
        return out

    def drop_oldest(self, count: int) -> int:
        """Drop the ``count`` oldest segments (never the active one); entries dropped."""
        dropped = 0
        for _ in range(count):
            if len(self.segments) <= 1:
                break
            dropped += self._drop_first()
        return dropped

    def _keep(self, batch: Batch) -> None:
        if self._segment_fill >= self.segment_entries:
            self.segments.append([])
            self._segment_fill = 0
        self.segments[-1].append(batch)
        n = batch.last_lsn - batch.first_lsn + 1
        self._segment_fill += n
        self.held_entries += n
        self.synced_lsn = batch.last_lsn

    def _drop_first(self) -> int:
        segment = self.segments.pop(0)
        n = sum(b.last_lsn - b.first_lsn + 1 for b in segment)
        self.held_entries -= n
        return n
