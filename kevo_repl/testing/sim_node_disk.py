"""A simulated node's data dir: its WAL, its store and its history chain.

Every node keeps the same three, whatever its role (``node/local_state.py``):

- the **WAL** holds records appended unsynced until an fdatasync; a power loss keeps the
  synced prefix and a random prefix of the unsynced tail (a torn tail is cut). Retention
  drops whole oldest segments (``segment_entries`` entries each) as ``core.retention``
  plans it, never above the store's checkpoint (the node syncs its store first);
- the **store** (the LMDB state) commits without syncing; a checkpoint makes it durable at
  an LSN the WAL already holds, so after a crash the node replays its own WAL past the
  checkpoint (a replica killed between its WAL append and its store apply loses nothing
  that was on disk). Store writes fail on demand (``fail_rate`` per apply,
  ``boot_fail_rate`` per bootstrap chunk and install: a full disk, an IO error);
- the **chain** is saved at once (before any record of a newer history is written).

A bootstrap or a rewind replaces the store (synced) and starts the WAL afresh after it.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from kevo_repl.core.errors import StorageError
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.retention import SegmentSpan, plan_retention
from kevo_repl.testing.messages import Batch, apply_entries

__all__ = ["NodeDisk"]


@dataclass(slots=True)
class NodeDisk:
    rng: random.Random | None = None  # draws the storage failures (none without it)
    fail_rate: float = 0.0
    boot_fail_rate: float = 0.0
    segment_entries: int = 16
    chain: HistoryChain = field(default_factory=HistoryChain)
    log: list[Batch] = field(default_factory=list)
    synced_lsn: int = 0
    wal_start: int = 1  # the first LSN this WAL can hold (after a bootstrap or rewind)
    state: dict[bytes, bytes] = field(default_factory=dict)
    applied_lsn: int = 0
    history_id: bytes = b""  # of the store's last batch
    ckpt_state: dict[bytes, bytes] = field(default_factory=dict)
    ckpt_lsn: int = 0
    ckpt_history: bytes = b""
    boot: dict[bytes, bytes] | None = None
    consistent_at: int = 0  # DIR/CONSISTENT_AT: a rewound store is served only from here
    failures: int = 0

    # ---- the WAL ------------------------------------------------------------------------------

    @property
    def last_lsn(self) -> int:
        return self.log[-1].last_lsn if self.log else self.wal_start - 1

    @property
    def unsynced(self) -> list[Batch]:
        i = len(self.log)
        while i and self.log[i - 1].last_lsn > self.synced_lsn:
            i -= 1
        return self.log[i:]

    @property
    def retained_from(self) -> int:
        return self.log[0].first_lsn if self.log else self.wal_start

    def append(self, batch: Batch) -> None:
        if batch.first_lsn != self.last_lsn + 1:
            raise AssertionError(f"WAL append {batch.first_lsn} after {self.last_lsn}")
        self.log.append(batch)

    def sync(self) -> list[Batch]:
        """fdatasync: the whole tail is durable; returns the batches it made durable."""
        done = self.unsynced
        self.synced_lsn = self.last_lsn
        return done

    def read(self, from_lsn: int, max_count: int, max_bytes: int = 1 << 62) -> list[Batch]:
        """Durable batches from the one holding ``from_lsn``: at least one, then by size."""
        out: list[Batch] = []
        size = 0
        for b in self.log[self._index_after(from_lsn - 1) :]:
            if b.last_lsn > self.synced_lsn or len(out) >= max_count:
                break
            if out and size + len(b.record) > max_bytes:
                break
            out.append(b)
            size += len(b.record)
        return out

    def tail_after(self, lsn: int) -> list[Batch] | None:
        """Our batches past ``lsn``; None when the WAL does not hold them from ``lsn + 1``."""
        tail = self.log[self._index_after(lsn) :]
        if lsn + 1 < self.retained_from or (tail and tail[0].first_lsn != lsn + 1):
            return None
        return tail

    def spans(self) -> list[SegmentSpan]:
        """Each synced segment's last LSN and size in entries, oldest first (as the WAL's)."""
        return [
            SegmentSpan(seg[-1].last_lsn if seg else self.synced_lsn, _entries(seg))
            for seg in self._segments()
        ]

    def retain(self, floor: int | None, keep: int, cap: int) -> tuple[bool, int] | None:
        """Retention as the node runs it: ``(capped, old floor)`` when segments went."""
        if self.synced_lsn - self.retained_from + 1 <= min(keep, cap):
            return None  # within both bounds: nothing to plan
        plan = plan_retention(self.spans(), floor, keep, cap)
        before = self.retained_from
        if plan.drop:
            self.checkpoint()  # the store first: the dropped records must be in it on disk
            self.drop_oldest(plan.drop)
        return (plan.capped, before) if self.retained_from != before else None

    def drop_oldest(self, count: int) -> None:
        """Drop up to ``count`` oldest segments: never the active one, nor past the store's
        checkpoint (the WAL must still lead from it to the applied LSN)."""
        segments = self._segments()
        drop = 0
        for seg in segments[: min(count, len(segments) - 1)]:
            if not seg or seg[-1].last_lsn > self.ckpt_lsn:
                break
            drop += len(seg)
        if drop:
            self.wal_start = self.log[drop - 1].last_lsn + 1
            del self.log[:drop]

    # ---- the store ----------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        self._maybe_fail("apply", self.fail_rate)
        apply_entries(self.state, batch.entries)
        self.applied_lsn, self.history_id = batch.last_lsn, batch.history_id

    def checkpoint(self) -> None:
        """Sync the store, but only at an LSN the WAL holds durably (else replay could not
        lead back to it)."""
        if self.applied_lsn <= self.synced_lsn:
            self.ckpt_state = dict(self.state)
            self.ckpt_lsn, self.ckpt_history = self.applied_lsn, self.history_id

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
        self.state, self.boot, self.consistent_at = self.boot, None, 0
        self.reset(snapshot_lsn, history_id)

    def rewind(self, puts: list[tuple[bytes, bytes | None]], lsn: int, history: bytes) -> None:
        for key, value in puts:
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
        self.reset(lsn, history)

    def seed(self, state: dict[bytes, bytes], lsn: int, history_id: bytes) -> None:
        """Start from an existing durable store, e.g. one of another history."""
        self.state, self.chain = dict(state), HistoryChain.root(history_id)
        self.reset(lsn, history_id)

    def reset(self, lsn: int, history_id: bytes) -> None:
        """The store (already replaced) is synced at ``lsn``; the WAL starts after it."""
        self.log = []
        self.wal_start, self.synced_lsn = lsn + 1, lsn
        self.applied_lsn, self.history_id = lsn, history_id
        self.ckpt_state = dict(self.state)
        self.ckpt_lsn, self.ckpt_history = lsn, history_id

    # ---- power loss ---------------------------------------------------------------------------

    def crash(self, rng: random.Random) -> list[Batch]:
        """Power loss; returns the unsynced batches that survived (now durable)."""
        tail = self.unsynced
        kept = tail[: rng.randint(0, len(tail))]
        lost = len(tail) - len(kept)
        if lost:
            del self.log[-lost:]
        self.synced_lsn = self.last_lsn
        self.boot = None
        self.state = dict(self.ckpt_state)
        self.applied_lsn, self.history_id = self.ckpt_lsn, self.ckpt_history
        for batch in self.log[self._index_after(self.applied_lsn) :]:  # replay our own WAL
            apply_entries(self.state, batch.entries)
            self.applied_lsn, self.history_id = batch.last_lsn, batch.history_id
        return kept

    # ---- internals ----------------------------------------------------------------------------

    def _index_after(self, lsn: int) -> int:
        """Index of the first batch ending past ``lsn``."""
        return bisect.bisect_right(self.log, lsn, key=lambda b: b.last_lsn)

    def _segments(self) -> list[list[Batch]]:
        segments: list[list[Batch]] = [[]]
        fill = 0
        for b in self.log:
            if b.last_lsn > self.synced_lsn:
                break
            if fill >= self.segment_entries:
                segments.append([])
                fill = 0
            segments[-1].append(b)
            fill += b.last_lsn - b.first_lsn + 1
        return segments

    def _maybe_fail(self, what: str, rate: float) -> None:
        if rate and self.rng is not None and self.rng.random() < rate:
            self.failures += 1
            raise StorageError(f"simulated {what} failure")


def _entries(segment: list[Batch]) -> int:
    return sum(b.last_lsn - b.first_lsn + 1 for b in segment)
