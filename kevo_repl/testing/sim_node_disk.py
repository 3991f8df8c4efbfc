"""A simulated node's data dir: its WAL, its store and its history chain.

Every node keeps the same three, whatever its role (``node/local_state.py``):

- the **WAL** holds records appended unsynced until an fdatasync; a power loss keeps the
  synced prefix and a random prefix of the unsynced tail (a torn tail is cut);
- the **store** (the LMDB state) commits without syncing; a checkpoint makes it durable at
  an LSN the WAL already holds, so after a crash the node replays its own WAL past the
  checkpoint (a replica killed between its WAL append and its store apply loses nothing
  that was on disk);
- the **chain** is saved at once (before any record of a newer history is written).

A bootstrap or a rewind replaces the store (synced) and starts the WAL afresh after it.
Retention is not modelled here: the logs cover every position (the single-primary
simulator covers retention), so every bootstrap in this world is a bug.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kevo_repl.core.history import HistoryChain
from kevo_repl.testing.disk import Batch, apply_entries

__all__ = ["NodeDisk"]


@dataclass(slots=True)
class NodeDisk:
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

    @property
    def last_lsn(self) -> int:
        return self.log[-1].last_lsn if self.log else self.wal_start - 1

    @property
    def unsynced(self) -> list[Batch]:
        return [b for b in self.log if b.last_lsn > self.synced_lsn]

    def append(self, batch: Batch) -> None:
        if batch.first_lsn != self.last_lsn + 1:
            raise AssertionError(f"WAL append {batch.first_lsn} after {self.last_lsn}")
        self.log.append(batch)

    def sync(self) -> list[Batch]:
        """fdatasync: the whole tail is durable; returns the batches it made durable."""
        done = self.unsynced
        self.synced_lsn = self.last_lsn
        return done

    def apply(self, batch: Batch) -> None:
        apply_entries(self.state, batch.entries)
        self.applied_lsn, self.history_id = batch.last_lsn, batch.history_id

    def checkpoint(self) -> None:
        """Sync the store, but only at an LSN the WAL holds durably (else replay could not
        lead back to it)."""
        if self.applied_lsn <= self.synced_lsn:
            self.ckpt_state = dict(self.state)
            self.ckpt_lsn, self.ckpt_history = self.applied_lsn, self.history_id

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
        for batch in self.log:  # recovery: replay our own WAL past the store's LSN
            if batch.last_lsn > self.applied_lsn:
                self.apply(batch)
        return kept

    def read(self, from_lsn: int, max_count: int) -> list[Batch]:
        """Durable batches from the one holding ``from_lsn``."""
        out = [b for b in self.log if b.last_lsn >= from_lsn and b.last_lsn <= self.synced_lsn]
        return out[:max_count]

    @property
    def retained_from(self) -> int:
        return self.log[0].first_lsn if self.log else self.wal_start

    def tail_after(self, lsn: int) -> list[Batch] | None:
        """Our batches past ``lsn``; None when the WAL does not hold them from ``lsn + 1``."""
        tail = [b for b in self.log if b.last_lsn > lsn]
        if lsn + 1 < self.retained_from or (tail and tail[0].first_lsn != lsn + 1):
            return None
        return tail

    def reset(self, lsn: int, history_id: bytes) -> None:
        """The store (already replaced) is synced at ``lsn``; the WAL starts after it."""
        self.log = []
        self.wal_start, self.synced_lsn = lsn + 1, lsn
        self.applied_lsn, self.history_id = lsn, history_id
        self.ckpt_state = dict(self.state)
        self.ckpt_lsn, self.ckpt_history = lsn, history_id
