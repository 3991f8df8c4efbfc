"""The serving side of a simulated node, the same for a primary and a replica.

As ``node/serving_requests.py``: Register (with history chains, and fencing a primary when
a follower of a newer history descending from its own registers), Heartbeat and Ack into
the real ``Registry``, WalSync from the node's own durable WAL, Bootstrap against credit,
and Rewind (the current values of a diverged tail's keys). A node that is itself copying
(mid-bootstrap or mid-rewind) serves neither a snapshot nor a rewind. ``ServingParams`` are
the knobs a seed draws (batch counts, chunk sizes, whether WalSync needs a registration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.core.registry import (
    DuplicateReplicaError,
    ImpossiblePositionError,
    Registry,
    WaitResult,
)
from kevo_repl.testing.messages import (
    Ack,
    Bootstrap,
    BootstrapChunk,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    Record,
    Register,
    RegisterReply,
    Reply,
    Request,
    Rewind,
    RewindReply,
    TooOld,
    WalSync,
    WalSyncReply,
)
from kevo_repl.testing.sim_node_disk import NodeDisk

__all__ = ["Serving", "ServingParams"]


@dataclass(slots=True)
class ServingParams:
    wal_sync_max_count: int = 8
    chunk_keys: int = 8  # keys per snapshot chunk; 0: the follower's chunk_bytes decide
    wal_sync_needs_registration: bool = False
    stale_after_ms: int = 600


@dataclass(slots=True)
class _Session:
    session_id: int
    items: list[tuple[bytes, bytes]]
    snapshot_lsn: int
    history_id: bytes
    chunk_bytes: int
    pos: int = 0
    seq: int = 0
    credit: int = 0


class Serving:
    """Answers followers. ``is_primary``/``consistent``/``now`` are the node's."""

    def __init__(
        self,
        disk: NodeDisk,
        send: Callable[[bytes, Reply], None],
        is_primary: Callable[[], bool],
        consistent: Callable[[], bool],
        now: Callable[[], int],
        params: ServingParams,
    ) -> None:
        self.disk, self.send, self.p = disk, send, params
        self.is_primary, self.consistent, self.now = is_primary, consistent, now
        self.registry = Registry(stale_after_ms=params.stale_after_ms)
        self.sessions: dict[bytes, _Session] = {}
        self.next_session = 1
        self.fenced = ""
        self.on_released: Callable[[list[WaitResult]], None] = lambda done: None
        self.served = dict.fromkeys(
            ("wal_syncs", "bootstraps", "rewinds", "too_old", "register_bootstrap"), 0
        )

    def reset(self) -> None:
        """A restart: the registry and every session are gone."""
        self.registry = Registry(
            stale_after_ms=self.p.stale_after_ms, primary_lsn=self.disk.synced_lsn
        )
        self.sessions.clear()
        self.fenced = ""

    def on_request(self, peer: bytes, msg: Request) -> None:
        now, reg = self.now(), self.registry
        try:
            if isinstance(msg, Ack):
                self.on_released(reg.ack(peer, msg.applied_lsn, msg.durable_lsn, now)[1])
            elif isinstance(msg, Heartbeat):
                r, done = reg.heartbeat(
                    peer,
                    msg.status,
                    msg.applied_lsn,
                    msg.durable_lsn,
                    msg.bootstrap_progress,
                    msg.error_message,
                    now,
                )
                self.on_released(done)
                if r is None:
                    self.send(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
                else:
                    self.send(peer, HeartbeatReply(self.disk.synced_lsn))
            elif isinstance(msg, Register):
                self._register(peer, msg)
            elif isinstance(msg, WalSync):
                self._wal_sync(peer, msg)
            elif isinstance(msg, Bootstrap):
                self._bootstrap(peer, msg)
            elif isinstance(msg, Rewind):
                self._rewind(peer, msg)
        except ImpossiblePositionError as exc:
            self.send(peer, ErrorReply(ErrorCode.BAD_REQUEST, str(exc)))

    def _register(self, peer: bytes, msg: Register) -> None:
        disk = self.disk
        try:
            self.registry.register(
                msg.replica_id, peer, msg.address, 2, msg.applied_lsn, self.now()
            )
        except DuplicateReplicaError as exc:
            self.send(peer, ErrorReply(ErrorCode.DUPLICATE_REPLICA, str(exc)))
            return
        ours, theirs = disk.chain, msg.chain
        if self.is_primary() and theirs.descends_from(ours) and not self.fenced:
            self.fenced = f"{msg.replica_id} follows a newer history"
        uncovered = msg.applied_lsn + 1 < disk.retained_from
        on_line = not theirs or ours.shared_lsn(theirs) is not None
        self.served["register_bootstrap"] += uncovered and on_line
        self.send(
            peer,
            RegisterReply(
                disk.synced_lsn,
                disk.retained_from,
                ours.current,
                uncovered and on_line,
                ours,
                self.is_primary(),
            ),
        )

    def _wal_sync(self, peer: bytes, msg: WalSync) -> None:
        disk = self.disk
        if self.p.wal_sync_needs_registration and self.registry.get(peer) is None:
            self.send(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
            return
        if msg.from_lsn < 1 or msg.from_lsn > disk.synced_lsn + 1:
            why = f"wal_sync: from_lsn {msg.from_lsn} outside 1..{disk.synced_lsn + 1}"
            self.send(peer, ErrorReply(ErrorCode.BAD_REQUEST, why))
            return
        if msg.from_lsn < disk.retained_from:
            self.served["too_old"] += 1
            self.send(peer, TooOld(disk.retained_from))
            return
        self.registry.note_catchup(peer, self.now())
        self.served["wal_syncs"] += 1
        records = tuple(
            Record(b.first_lsn, b.last_lsn, b.history_id, b.record)
            for b in disk.read(msg.from_lsn, self.p.wal_sync_max_count, msg.max_bytes)
        )
        self.send(peer, WalSyncReply(records, disk.synced_lsn))

    def _bootstrap(self, peer: bytes, msg: Bootstrap) -> None:
        if self.registry.get(peer) is None:
            self.send(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
            return
        if msg.session_id == 0:
            if not self.consistent():
                self.send(peer, ErrorReply(ErrorCode.CREDIT, "this node is copying its data"))
                return
            disk = self.disk
            s = _Session(
                self.next_session,
                sorted(disk.state.items()),
                disk.applied_lsn,
                disk.history_id,
                msg.chunk_bytes,
            )
            self.next_session += 1
            self.sessions[peer] = s
            self.registry.note_bootstrap(peer, s.snapshot_lsn, self.now())
            self.served["bootstraps"] += 1
        else:
            found = self.sessions.get(peer)
            if found is None or found.session_id != msg.session_id:
                if msg.session_id >= self.next_session:
                    why = f"unknown session {msg.session_id}"
                    self.send(peer, ErrorReply(ErrorCode.CREDIT, why))
                return
            s = found
        s.credit += msg.credit
        while s.credit > 0:
            part = self._chunk(s)
            s.pos += len(part)
            last = s.pos >= len(s.items)
            progress = 1.0 if last else s.pos / len(s.items)
            self.send(
                peer,
                BootstrapChunk(
                    s.session_id,
                    s.seq,
                    [k for k, _ in part],
                    [v for _, v in part],
                    progress,
                    last,
                    s.snapshot_lsn,
                    s.history_id,
                ),
            )
            s.seq += 1
            s.credit -= 1
            if last:
                del self.sessions[peer]
                return

    def _chunk(self, s: _Session) -> list[tuple[bytes, bytes]]:
        """The next chunk: ``chunk_keys`` keys, or (when 0) at least one and then by size."""
        if self.p.chunk_keys:
            return s.items[s.pos : s.pos + self.p.chunk_keys]
        part: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in s.items[s.pos :]:
            if part and size >= s.chunk_bytes:
                break
            part.append((key, value))
            size += len(key) + len(value)
        return part

    def _rewind(self, peer: bytes, msg: Rewind) -> None:
        if not self.consistent():
            self.send(peer, ErrorReply(ErrorCode.CREDIT, "this node is copying its data"))
            return
        state = self.disk.state
        self.served["rewinds"] += 1
        self.send(
            peer,
            RewindReply(
                self.disk.applied_lsn,
                list(msg.keys),
                [state.get(k, b"") for k in msg.keys],
                [k in state for k in msg.keys],
            ),
        )

    def tick(self) -> None:
        self.on_released(self.registry.tick(self.now())[1])
