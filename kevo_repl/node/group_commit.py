"""The primary's write path: many client writes, one WAL record, one fdatasync, one publish.

Writes drained from the ROUTER in one loop turn are sealed into one WAL payload by
concatenating the clients' columnar batches (no entry is re-encoded). ``start`` writes the
record and hands its fdatasync to a helper thread; the loop goes on draining and writing the
next groups meanwhile (a pipeline: the WAL's group commit folds queued syncs together).
``finish_ready`` then takes the groups whose sync completed, in LSN order, applies them to
LMDB and returns them to be published and answered. So a group is visible (store, stream,
replies, WalSync) only once durable: a replica never holds a batch the primary could lose,
and no read sees a write that a crash could still take back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import Appended, WriteAheadLog
from kevo_repl.core.errors import KevoError
from kevo_repl.core.record import decode_record
from kevo_repl.wire.batch import decode_batch, seal_batch

__all__ = ["CommittedWrite", "GroupCommitter", "InFlightGroup", "PendingWrite"]

MAX_IN_FLIGHT = 1  # groups written but not yet durable; beyond it new writes wait


@dataclass(slots=True)
class PendingWrite:
    """One client write waiting for the next group commit."""

    peer: bytes
    request_id: int
    payload: bytes  # a validated client WalBatch
    count: int
    wait_replicas: int
    timeout_ms: int
    ops: Sequence[int]  # the validated columns, applied without parsing the payload again
    keys: Sequence[bytes]
    values: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class CommittedWrite:
    write: PendingWrite
    first_lsn: int
    last_lsn: int


@dataclass(slots=True)
class InFlightGroup:
    appended: Appended
    group: list[PendingWrite]
    sync: Future[int] | None  # None: no per-commit sync (fsync interval/none)

    def committed(self) -> list[CommittedWrite]:
        out: list[CommittedWrite] = []
        lsn = self.appended.first_lsn
        for w in self.group:
            out.append(CommittedWrite(w, lsn, lsn + w.count - 1))
            lsn += w.count
        return out


@dataclass(slots=True)
class GroupCommitter:
    """Collects writes and commits them as one batch; the driver supplies clock and publish."""

    wal: WriteAheadLog
    store: StateStore
    wall_us: Callable[[], int]
    sync_each_commit: bool  # fsync=always: the client's answer waits for fdatasync
    max_group_entries: int = 65536
    pending: list[PendingWrite] = field(default_factory=list)
    pending_entries: int = 0
    store_error: str = ""
    committed_lsn: int = 0  # last LSN durable, applied and handed out for publishing
    in_flight: deque[InFlightGroup] = field(default_factory=deque)
    _syncer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="wal-sync")
    )

    def add(self, write: PendingWrite) -> bool:
        """Queue a write; True when the group is full and should be committed now."""
        self.pending.append(write)
        self.pending_entries += write.count
        return self.pending_entries >= self.max_group_entries

    def start(self, on_durable: Callable[[], None]) -> InFlightGroup | None:
        """Seal and write the pending writes as one record; its sync runs on a helper thread
        and calls ``on_durable`` (from that thread) when done.

        Raises ``StorageError`` when the WAL refuses the write: nothing of this group was
        written then, and the caller answers its writers with an error.
        """
        if not self.pending or len(self.in_flight) >= MAX_IN_FLIGHT:
            return None  # the writes wait for a finished group to make room
        group, self.pending, self.pending_entries = self.pending, [], 0
        payload = seal_batch([w.payload for w in group], self.wal.history_id, self.wall_us())
        appended = self.wal.write(payload, sum(w.count for w in group))
        sync: Future[int] | None = None
        if self.sync_each_commit:
            sync = self._syncer.submit(self.wal.sync)
            sync.add_done_callback(lambda _: on_durable())
        flight = InFlightGroup(appended, group, sync)
        self.in_flight.append(flight)
        return flight

    def finish_ready(self, wait: bool = False) -> list[InFlightGroup]:
        """Durable groups, oldest first, now applied to the store (``wait``: all of them).

        Raises ``StorageError`` if a sync failed: the WAL then refuses everything after, and
        the caller fails the writers of every group still in flight.
        """
        done: list[InFlightGroup] = []
        while self.in_flight:
            head = self.in_flight[0]
            if head.sync is not None:
                if not (wait or head.sync.done()):
                    break
                head.sync.result()  # re-raises the sync's StorageError
            self.in_flight.popleft()
            self._apply(head.appended, head.group)
            self.committed_lsn = head.appended.last_lsn
            done.append(head)
        return done

    def drop_in_flight(self) -> list[InFlightGroup]:
        """After a failed sync: every group not yet finished, for the caller to refuse."""
        failed = list(self.in_flight)
        self.in_flight.clear()
        return failed

    def catch_up_store(self) -> int:
        """Replay WAL records the store has not applied (recovery, or after a failed apply)."""
        replayed = 0
        start = self.store.applied_lsn + 1
        if start > self.wal.last_lsn:
            self.store_error = ""
            return 0
        for record in self.wal.read_from(start):
            decoded = decode_record(record)
            if decoded.last_lsn <= self.store.applied_lsn:
                continue
            batch = decode_batch(decoded.payload)
            self.store.apply(
                decoded.first_lsn,
                decoded.last_lsn,
                self.wal.history_id,
                batch.ops,
                batch.keys,
                batch.values,
            )
            replayed += decoded.last_lsn - decoded.first_lsn + 1
        self.store_error = ""
        return replayed

    def close(self) -> None:
        self._syncer.shutdown(wait=True)

    def _apply(self, appended: Appended, group: list[PendingWrite]) -> None:
        # The WAL is the truth: a failed apply leaves the store behind, and the driver
        # replays it from the WAL (catch_up_store) instead of failing the committed write.
        if self.store_error:
            return
        if len(group) == 1:
            ops, keys, values = group[0].ops, group[0].keys, group[0].values
        else:
            ops, keys, values = [], [], []
            for w in group:
                ops.extend(w.ops)
                keys.extend(w.keys)
                values.extend(w.values)
        try:
            self.store.apply(
                appended.first_lsn, appended.last_lsn, self.wal.history_id, ops, keys, values
            )
        except KevoError as exc:
            self.store_error = str(exc)
