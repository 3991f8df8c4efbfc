"""The primary's write path: many client writes, a few WAL records, one fdatasync, one publish.

Writes drained from the ROUTER are sealed into WAL payloads by concatenating the clients'
columnar batches (no entry is re-encoded), behind a prefix that names each idempotent batch
by (client id, seq) and the offset of its first entry, so its LSNs are known from the WAL
alone (``retry_guard``). ``start`` takes a group of pending writes of at most
``max_group_bytes``, cuts it into records of at most ``record_target_bytes`` (a single larger
write gets a record of its own), writes them and hands their fdatasync to a helper thread;
the loop goes on draining meanwhile. ``finish_ready`` then takes the groups whose
sync completed, in LSN order, and returns them to be published and answered; their store
apply (``apply_finished``) comes after the next group's fdatasync has started, so the LMDB
transaction overlaps that sync instead of delaying the answers, and the driver runs it in the
same loop turn, before it handles any read (a group with deletes is applied before it is
answered: the answer counts the deletes that found no key). So a group is visible (store,
stream, WalSync) only once durable, in every fsync mode: a replica never holds a batch the
primary could lose, and no read sees a write that a crash could still take back. With
``ack_before_sync`` (``--fsync interval``) the writers are answered as soon as their record
is written instead; reads of the keys they wrote wait until the group is applied
(``unapplied``), so clients still read their writes.

Each group is timed for ``--metrics-port`` (``NodeStats``): its fdatasync on the helper
thread, its store apply here; the driver times the whole commit once it is published.

The byte caps keep every record receivable by every follower (the stream carries records up
to ``record_target_bytes``; WalSync replies carry any record), and bound what is pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kevo_repl.adapters.clock import monotonic_s
from kevo_repl.adapters.state_lmdb import Batch, StateStore
from kevo_repl.adapters.wal_files import Appended, WriteAheadLog
from kevo_repl.core.errors import KevoError
from kevo_repl.core.ops import OP_DELETE
from kevo_repl.core.record import RECORD_HEADER_BYTES, decode_record
from kevo_repl.node.stats import NodeStats
from kevo_repl.wire import pb
from kevo_repl.wire.batch import CLIENT_WRITE_BYTES, decode_batch, seal_batch

__all__ = [
    "RECORD_OVERHEAD_BYTES",
    "CommittedWrite",
    "GroupCommitter",
    "InFlightGroup",
    "PendingWrite",
    "SealedRecord",
]

# Groups written but not yet durable; beyond it new writes wait. Two: the helper thread
# starts the second's fdatasync as soon as the first returns (docs/benchmarks.md).
MAX_IN_FLIGHT = 2
# A record is its client payloads (with their prefix entries, ``sealed_bytes``) plus this at
# most: the record header and the sealing suffix
# (history id and commit time).
RECORD_OVERHEAD_BYTES = RECORD_HEADER_BYTES + 64
_MIB = 1024 * 1024


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
    coalesce: bool = False  # the client reads WriteReplies: answered with its others at once
    client_id: bytes = b""  # an idempotent batch: sealed with its (client id, seq) and hash
    seq: int = 0
    payload_hash: bytes = b""
    # Retries of this batch that arrived before it committed, (peer, request id): answered
    # with it, never written again.
    also: list[tuple[bytes, int]] = field(default_factory=list)

    @property
    def sealed_bytes(self) -> int:
        """What the write adds to a record: its payload, and its entry in the prefix."""
        return len(self.payload) + (CLIENT_WRITE_BYTES if self.client_id else 0)

    def answerers(self) -> list[tuple[bytes, int]]:
        return [(self.peer, self.request_id), *self.also]


def _client_writes(writes: list[PendingWrite]) -> list[pb.ClientWrite]:
    """The record's prefix: each idempotent write at the index of its first entry, the
    same order and offsets ``SealedRecord.committed`` gives LSNs by."""
    out: list[pb.ClientWrite] = []
    offset = 0
    for w in writes:
        if w.client_id:
            out.append(
                pb.ClientWrite(
                    client_id=w.client_id,
                    seq=w.seq,
                    offset=offset,
                    count=w.count,
                    payload_hash=w.payload_hash,
                )
            )
        offset += w.count
    return out


@dataclass(frozen=True, slots=True)
class CommittedWrite:
    write: PendingWrite
    first_lsn: int
    last_lsn: int

    @property
    def lsns(self) -> tuple[int, int]:
        return self.first_lsn, self.last_lsn


@dataclass(slots=True)
class SealedRecord:
    """One WAL record of a group: the stored bytes and the writes it carries."""

    appended: Appended
    writes: list[PendingWrite]

    def committed(self) -> list[CommittedWrite]:
        out: list[CommittedWrite] = []
        lsn = self.appended.first_lsn
        for w in self.writes:
            out.append(CommittedWrite(w, lsn, lsn + w.count - 1))
            lsn += w.count
        return out


@dataclass(slots=True)
class InFlightGroup:
    records: list[SealedRecord]
    sync: Future[int]
    started_s: float = 0.0  # monotonic seconds when the group was taken: its commit latency
    absent: list[int] = field(default_factory=list)  # LSNs of deletes that found no key
    deletes: bool = False  # its answers need ``absent``: applied before they are sent

    @property
    def last_lsn(self) -> int:
        return self.records[-1].appended.last_lsn

    @property
    def entries(self) -> int:
        return self.last_lsn - self.records[0].appended.first_lsn + 1

    def committed(self) -> list[CommittedWrite]:
        return [c for r in self.records for c in r.committed()]

    def writes(self) -> list[PendingWrite]:
        return [w for r in self.records for w in r.writes]


@dataclass(slots=True)
class GroupCommitter:
    """Collects writes and commits them in groups; the driver supplies clock and publish."""

    wal: WriteAheadLog
    store: StateStore
    wall_us: Callable[[], int]
    stats: NodeStats = field(default_factory=NodeStats)
    clock_s: Callable[[], float] = monotonic_s  # durations for the histograms
    ack_before_sync: bool = False  # fsync=interval: answer at write, publish once durable
    max_group_entries: int = 65536
    max_group_bytes: int = 16 * _MIB  # one fdatasync covers at most this much (or one write)
    record_target_bytes: int = 256 * 1024  # records are cut here: the stream's frame limit
    max_pending_bytes: int = 64 * _MIB  # beyond it the driver stops draining (backpressure)
    pending: deque[PendingWrite] = field(default_factory=deque)
    pending_entries: int = 0
    pending_bytes: int = 0
    store_error: str = ""
    committed_lsn: int = 0  # last LSN durable, applied and handed out for publishing
    in_flight: deque[InFlightGroup] = field(default_factory=deque)
    applying: list[InFlightGroup] = field(default_factory=list)  # durable, not in the store yet
    unapplied: dict[bytes, int] = field(default_factory=dict)  # ack_before_sync: key -> LSN
    _syncer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="wal-sync")
    )

    @property
    def backlogged(self) -> bool:
        """True while pending writes are at their byte cap: stop taking new ones."""
        return self.pending_bytes >= self.max_pending_bytes

    @property
    def waiting_writes(self) -> int:
        """Writes queued or in flight (not yet answered as committed)."""
        return len(self.pending) + sum(len(g.writes()) for g in self.in_flight)

    def add(self, write: PendingWrite) -> bool:
        """Queue a write; True when a full group is pending and should be committed now."""
        self.pending.append(write)
        self.pending_entries += write.count
        self.pending_bytes += len(write.payload)
        return (
            self.pending_entries >= self.max_group_entries
            or self.pending_bytes >= self.max_group_bytes
        )

    def start(self, on_durable: Callable[[], None]) -> InFlightGroup | None:
        """Seal and write a group of pending writes as records; its sync runs on a helper
        thread and calls ``on_durable`` (from that thread) when done.

        Raises ``StorageError`` when the WAL refuses a write. The WAL then refuses all later
        work; records of this group written before the failure may survive a restart, so
        the caller must report the outcome of the group's writes as unknown.
        """
        if not self.pending or len(self.in_flight) >= MAX_IN_FLIGHT:
            return None  # the writes wait for a finished group to make room
        started = self.clock_s()
        records: list[SealedRecord] = []
        group = self._take_group()
        try:
            for writes in group:
                payload = seal_batch(
                    [w.payload for w in writes],
                    self.wal.history_id,
                    self.wall_us(),
                    _client_writes(writes),
                )
                appended = self.wal.write(payload, sum(w.count for w in writes))
                records.append(SealedRecord(appended, writes))
        except BaseException:
            for w in reversed([w for writes in group for w in writes]):  # for take_pending
                self.pending.appendleft(w)
                self.pending_entries += w.count
                self.pending_bytes += len(w.payload)
            raise
        sync = self._syncer.submit(self.stats.timed_sync(self.wal.sync))
        sync.add_done_callback(lambda _: on_durable())
        deletes = any(OP_DELETE in w.ops for writes in group for w in writes)
        flight = InFlightGroup(records, sync, started, deletes=deletes)
        self.in_flight.append(flight)
        if self.ack_before_sync:
            for record in records:
                for write in record.writes:
                    for key in write.keys:
                        self.unapplied[key] = record.appended.last_lsn
        return flight

    def _take_group(self) -> list[list[PendingWrite]]:
        """The next group's writes, cut into records at ``record_target_bytes``."""
        records: list[list[PendingWrite]] = []
        current: list[PendingWrite] = []
        current_bytes = total = entries = 0
        while self.pending:
            w = self.pending[0]
            size = w.sealed_bytes
            if records or current:  # a group always takes at least one write
                if total + size > self.max_group_bytes:
                    break
                if entries + w.count > self.max_group_entries:
                    break
            self.pending.popleft()
            self.pending_entries -= w.count
            self.pending_bytes -= len(w.payload)
            if current and current_bytes + size > self.record_target_bytes:
                records.append(current)
                current, current_bytes = [], 0
            current.append(w)
            current_bytes += size
            total += size
            entries += w.count
        records.append(current)
        return records

    def finish_ready(self, wait: bool = False) -> list[InFlightGroup]:
        """Durable groups, oldest first (``wait``: all of them), to publish and answer; the
        caller applies them with ``apply_finished`` before it handles a read.

        Raises ``StorageError`` if a sync failed: the WAL then refuses everything after, and
        the caller fails the writers of every group still in flight.
        """
        done: list[InFlightGroup] = []
        while self.in_flight:
            head = self.in_flight[0]
            if not (wait or head.sync.done()):
                break
            head.sync.result()  # re-raises the sync's StorageError
            self.in_flight.popleft()
            self.committed_lsn = head.last_lsn
            self.applying.append(head)
            if head.deletes:
                self.apply_finished()
            done.append(head)
        return done

    def apply_finished(self) -> None:
        """Apply every durable group not yet in the store, in one transaction."""
        groups, self.applying = self.applying, []
        if not groups:
            return
        self._apply(groups)
        if self.unapplied:
            for flight in groups:
                self._forget_applied(flight)

    def drop_in_flight(self) -> list[InFlightGroup]:
        """After a failed sync: every group not yet finished, for the caller to refuse."""
        failed = list(self.in_flight)
        self.in_flight.clear()
        self.unapplied.clear()
        return failed

    def take_pending(self) -> list[PendingWrite]:
        """Every queued write (for the caller to refuse after the WAL failed)."""
        failed = list(self.pending)
        self.pending.clear()
        self.pending_entries = self.pending_bytes = 0
        return failed

    def catch_up_store(self, upto_lsn: int | None = None) -> int:
        """Replay WAL records the store has not applied (recovery, or after a failed apply),
        never past ``upto_lsn`` (default ``committed_lsn``: a group still syncing is not
        durable yet and must not reach the store)."""
        limit = self.committed_lsn if upto_lsn is None else upto_lsn
        replayed = 0
        start = self.store.applied_lsn + 1
        if start > min(limit, self.wal.last_lsn):
            self.store_error = ""
            return 0
        for record in self.wal.read_from(start):
            decoded = decode_record(record)
            if decoded.last_lsn > limit:
                break
            if decoded.last_lsn <= self.store.applied_lsn:
                continue
            batch = decode_batch(decoded.payload)
            self.store.apply_many(
                [(decoded.first_lsn, decoded.last_lsn, batch.ops, batch.keys, batch.values)],
                batch.history_id,
                new_history=batch.history_id != self.store.history_id,
            )
            replayed += decoded.last_lsn - decoded.first_lsn + 1
        self.store_error = ""
        return replayed

    def close(self) -> None:
        self._syncer.shutdown(wait=True)

    def _apply(self, groups: list[InFlightGroup]) -> None:
        # The WAL is the truth: a failed apply leaves the store behind, and the driver
        # replays it from the WAL (catch_up_store) instead of failing the committed write.
        if self.store_error:
            return
        started = self.clock_s()
        batches: list[Batch] = []
        for flight in groups:
            for record in flight.records:
                writes = record.writes
                if len(writes) == 1:
                    ops, keys, values = writes[0].ops, writes[0].keys, writes[0].values
                else:
                    ops, keys, values = [], [], []
                    for w in writes:
                        ops.extend(w.ops)
                        keys.extend(w.keys)
                        values.extend(w.values)
                a = record.appended
                batches.append((a.first_lsn, a.last_lsn, ops, keys, values))
        history = self.wal.history_id  # a promotion's first group starts a new history
        try:
            self.store.apply_many(
                batches,
                history,
                new_history=history != self.store.history_id,
                absent=groups[-1].absent if groups[-1].deletes else None,
            )
        except KevoError as exc:
            self.store_error = str(exc)
            return
        self.stats.apply_seconds.observe(self.clock_s() - started)

    def _forget_applied(self, flight: InFlightGroup) -> None:
        last = flight.last_lsn
        unapplied = self.unapplied
        for w in flight.writes():
            for key in w.keys:
                if unapplied.get(key, last + 1) <= last:
                    del unapplied[key]
