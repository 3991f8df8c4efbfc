"""The simulated primary: a WAL, a state dict and the real ``Registry``, answering requests.

It does what DESIGN.md section 4 says the real primary does: group-commits client batches
(sync, then apply, then publish), beacons, answers Register / Heartbeat / Ack / WalSync /
Bootstrap, streams a snapshot in seq-numbered chunks only against credit, and runs
retention below ``min(retention bound, registry floor)`` with a hard size cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.core.registry import DuplicateReplicaError, Registry, WaitResult
from kevo_repl.core.retention import plan_retention
from kevo_repl.testing.checkers import Checker, Truth, Violation
from kevo_repl.testing.disk import Batch, PrimaryWal, apply_entries
from kevo_repl.testing.messages import (
    Ack,
    Beacon,
    Bootstrap,
    BootstrapChunk,
    Entry,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    Record,
    Register,
    RegisterReply,
    Request,
    TooOld,
    WalSync,
    WalSyncReply,
)
from kevo_repl.testing.net import Network
from kevo_repl.testing.scheduler import Scheduler

__all__ = ["PrimaryParams", "SimPrimary"]


@dataclass(slots=True)
class PrimaryParams:
    segment_entries: int = 16
    keep_entries: int = 1_000_000  # retention floor: kept whatever replicas need
    cap_entries: int = 1_000_000  # hard size cap, whatever replicas still need
    group_commit_ms: int = 2
    beacon_ms: int = 200
    wal_sync_max_count: int = 8
    keyspace: int = 32
    wal_sync_needs_registration: bool = False
    stale_after_ms: int = 600


@dataclass(frozen=True, slots=True)
class _Write:
    entries: tuple[Entry, ...]


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


class SimPrimary:
    """One primary node; ``incarnation`` guards timers across crashes."""

    def __init__(
        self,
        sched: Scheduler,
        rng: random.Random,
        net: Network,
        truth: Truth,
        checker: Checker,
        params: PrimaryParams,
    ) -> None:
        self.sched, self.rng, self.net, self.truth, self.checker = sched, rng, net, truth, checker
        self.p = params
        self.wal = PrimaryWal(rng.randbytes(16), params.segment_entries)
        self.state: dict[bytes, bytes] = {}
        self.registry = Registry(stale_after_ms=params.stale_after_ms)
        self.up = False
        self.incarnation = 0
        self._sessions: dict[bytes, _Session] = {}
        self._next_session = 1
        self._sync_due = False
        self._waits: dict[int, tuple[int, int]] = {}
        self._next_token = 1
        self._backlog: list[tuple[bytes, Request] | _Write] | None = None  # while paused
        self.on_drop: Callable[[bool, int], None] = lambda forced, old_retained: None
        self.on_wait: Callable[[WaitResult, int, int], None] = lambda result, lsn, k: None
        self.stats = {
            "commits": 0,
            "wal_syncs_served": 0,
            "bootstraps_served": 0,
            "too_old": 0,
            "register_bootstrap": 0,
        }
        net.attach_primary(self.on_request)

    @property
    def history_id(self) -> bytes:
        return self.wal.history_id

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.up = True
        self.incarnation += 1
        self.registry = Registry(
            stale_after_ms=self.p.stale_after_ms, primary_lsn=self.wal.last_lsn
        )
        self.net.set_primary_up(True)
        inc = self.incarnation
        self.sched.every(self.p.beacon_ms, lambda: self._beacon(inc), first_ms=self.sched.now)
        self.sched.every(100, lambda: self._housekeeping(inc))
        self.sched.note(
            "primary", "start", lsn=self.wal.last_lsn, history=self.history_id.hex()[:8]
        )

    def crash(self) -> None:
        """Process or power loss: unsynced WAL tail partly lost, sessions and registry gone."""
        self.up = False
        self.incarnation += 1
        self._backlog = None
        self.net.set_primary_up(False)
        self._sessions.clear()
        self._waits.clear()
        self._sync_due = False
        recovered = self.wal.crash(self.rng)
        for batch in recovered:  # complete records that reached the disk: committed on recovery
            self._commit(batch, publish=False)
        self.sched.note("primary", "crash", lsn=self.wal.last_lsn, recovered=len(recovered))

    def restart(self) -> None:
        self.checker.check_recovered(self.wal, self.state)
        self.start()

    def pause(self, duration_ms: int) -> None:
        """SIGSTOP: requests and client writes queue in the sockets; no beacons, no commits."""
        if self.up and self._backlog is None:
            self._backlog = []
            self.sched.note("primary", "pause", ms=duration_ms)
            self.sched.after(duration_ms, self._resume, self.incarnation)

    def resume_now(self) -> None:
        self._resume(self.incarnation)

    def _resume(self, inc: int) -> None:
        backlog, self._backlog = self._backlog, None
        if inc != self.incarnation or backlog is None:
            return
        self.sched.note("primary", "resume", backlog=len(backlog))
        for item in backlog:  # stale requests of sockets the replicas have since replaced
            if isinstance(item, _Write):
                self.write(item.entries)
            else:
                self.on_request(*item)
        if self.wal.unsynced and not self._sync_due:
            self._sync_due = True
            self.sched.after(self.p.group_commit_ms, self._sync, self.incarnation)

    def reinit(self) -> None:
        """The data directory was wiped: a new history from LSN 1 (replicas must bootstrap)."""
        self.wal = PrimaryWal(self.rng.randbytes(16), self.p.segment_entries)
        self.state = {}
        self.sched.note("primary", "reinit", history=self.history_id.hex()[:8])

    # ---- client writes --------------------------------------------------------------------

    def write(self, entries: tuple[Entry, ...], wait_replicas: int = 0, wait_ms: int = 0) -> None:
        if not self.up:
            return
        if self._backlog is not None:
            self._backlog.append(_Write(entries))  # waits are not modelled across a pause
            return
        batch = self.wal.append(entries)
        if wait_replicas:
            token, self._next_token = self._next_token, self._next_token + 1
            self._waits[token] = (batch.last_lsn, wait_replicas)
            self.sched.after(self.p.group_commit_ms, self._wait, self.incarnation, token, wait_ms)
        if not self._sync_due:
            self._sync_due = True
            self.sched.after(self.p.group_commit_ms, self._sync, self.incarnation)

    def random_entries(self) -> tuple[Entry, ...]:
        rng = self.rng
        return tuple(
            (1, b"k%03d" % rng.randrange(self.p.keyspace), b"v%d" % rng.randrange(10**6))
            if rng.random() < 0.85
            else (2, b"k%03d" % rng.randrange(self.p.keyspace), b"")
            for _ in range(rng.randint(1, 4))
        )

    # ---- requests -------------------------------------------------------------------------

    def on_request(self, peer: bytes, msg: Request) -> None:
        if not self.up:
            return
        if self._backlog is not None:
            self._backlog.append((peer, msg))
            return
        now = self.sched.now
        reg = self.registry
        if isinstance(msg, Ack):
            self._waited(reg.ack(peer, msg.applied_lsn, msg.durable_lsn, now)[1])
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
            self._waited(done)
            if r is None:
                self.net.reply(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
            else:
                self.net.reply(peer, HeartbeatReply(self.wal.last_lsn))
        elif isinstance(msg, Register):
            self._register(peer, msg)
        elif isinstance(msg, WalSync):
            self._wal_sync(peer, msg)
        elif isinstance(msg, Bootstrap):
            self._bootstrap(peer, msg)

    def _register(self, peer: bytes, msg: Register) -> None:
        last, retained = self.wal.last_lsn, self.wal.retained_from
        foreign = bool(msg.history_id) and msg.history_id != self.history_id
        ahead = not foreign and msg.applied_lsn > last
        if ahead:
            raise Violation(
                "durability", f"{msg.replica_id} applied {msg.applied_lsn}, primary has only {last}"
            )
        required = foreign or msg.applied_lsn + 1 < retained
        self.stats["register_bootstrap"] += required
        try:  # as node/primary_requests.py does: even another history's LSN is recorded
            self.registry.register(
                msg.replica_id,
                peer,
                msg.address,
                2,
                msg.applied_lsn,
                self.sched.now,
            )
        except DuplicateReplicaError as e:
            self.net.reply(peer, ErrorReply(ErrorCode.DUPLICATE_REPLICA, str(e)))
            return
        self.net.reply(peer, RegisterReply(last, retained, self.history_id, required))

    def _wal_sync(self, peer: bytes, msg: WalSync) -> None:
        if self.p.wal_sync_needs_registration and self.registry.get(peer) is None:
            self.net.reply(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
            return
        if msg.from_lsn < self.wal.retained_from:
            self.stats["too_old"] += 1
            self.net.reply(peer, TooOld(self.wal.retained_from))
            return
        self.registry.note_catchup(peer, self.sched.now)
        self.stats["wal_syncs_served"] += 1
        batches = self.wal.read(msg.from_lsn, msg.max_bytes, self.p.wal_sync_max_count)
        records = tuple(Record(b.first_lsn, b.last_lsn, b.history_id, b.record) for b in batches)
        self.net.reply(peer, WalSyncReply(records, self.wal.last_lsn))

    def _bootstrap(self, peer: bytes, msg: Bootstrap) -> None:
        if self.registry.get(peer) is None:
            self.net.reply(peer, ErrorReply(ErrorCode.NOT_REGISTERED, "register first"))
            return
        if msg.session_id == 0:
            items = sorted(self.state.items())
            session = _Session(
                self._next_session, items, self.wal.last_lsn, self.history_id, msg.chunk_bytes
            )
            self._next_session += 1
            self._sessions[peer] = session  # replaces any older session of this peer
            self.registry.note_bootstrap(peer, session.snapshot_lsn, self.sched.now)
            self.stats["bootstraps_served"] += 1
        else:
            found = self._sessions.get(peer)
            if found is None or found.session_id != msg.session_id:
                if msg.session_id < self._next_session:
                    return  # a grant that crossed the last chunk: harmless, and not an error
                self.net.reply(
                    peer, ErrorReply(ErrorCode.CREDIT, f"unknown session {msg.session_id}")
                )
                return
            session = found
            self.registry.seen(peer, self.sched.now)
        session.credit += msg.credit
        self._pump(peer, session)

    def _pump(self, peer: bytes, s: _Session) -> None:
        """Send chunks while the replica has granted credit: never a tight send loop."""
        total = len(s.items)
        while s.credit > 0:
            keys: list[bytes] = []
            values: list[bytes] = []
            size = 0
            while s.pos < total and (not keys or size < s.chunk_bytes):
                key, value = s.items[s.pos]
                keys.append(key)
                values.append(value)
                size += len(key) + len(value)
                s.pos += 1
            last = s.pos >= total
            progress = 1.0 if last else s.pos / total
            self.net.reply(
                peer,
                BootstrapChunk(
                    s.session_id, s.seq, keys, values, progress, last, s.snapshot_lsn, s.history_id
                ),
            )
            s.seq += 1
            s.credit -= 1
            if last:
                del self._sessions[peer]
                return

    # ---- commit, beacons, housekeeping -------------------------------------------------------

    def _sync(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        self._sync_due = False
        if self._backlog is not None:
            return  # paused: the resume syncs
        for batch in self.wal.sync():  # persist, then apply, then publish
            self._commit(batch, publish=True)
        self._retention()

    def _commit(self, batch: Batch, publish: bool) -> None:
        apply_entries(self.state, batch.entries)
        self.truth.log(batch.history_id).commit(batch, self.state)
        self.stats["commits"] += 1
        if publish:
            self.registry.note_commit(batch.last_lsn, self.sched.now)
            self.net.publish(
                Record(batch.first_lsn, batch.last_lsn, batch.history_id, batch.record)
            )

    def _retention(self) -> None:
        """The node's rule (``core.retention``), counted in entries instead of bytes."""
        plan = plan_retention(
            self.wal.spans(),
            self.registry.retention_floor(),
            self.p.keep_entries,
            self.p.cap_entries,
        )
        if plan.drop:
            retained = self.wal.retained_from
            self.wal.drop_oldest(plan.drop)
            self.on_drop(plan.capped, retained)

    def _beacon(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        if self._backlog is not None:
            return True
        self.net.publish(Beacon(self.history_id, self.wal.last_lsn))
        return True

    def _housekeeping(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        if self._backlog is not None:
            return True
        _, expired = self.registry.tick(self.sched.now)
        self._waited(expired)
        self._retention()
        return True

    def _wait(self, inc: int, token: int, wait_ms: int) -> None:
        if inc != self.incarnation or token not in self._waits:
            return
        if self._backlog is not None:
            self.sched.after(self.p.group_commit_ms, self._wait, inc, token, wait_ms)
            return
        lsn, k = self._waits[token]
        if lsn > self.wal.last_lsn:  # not committed yet: ask again after the next group commit
            self.sched.after(self.p.group_commit_ms, self._wait, inc, token, wait_ms)
            return
        result = self.registry.wait_for(token, lsn, k, self.sched.now + wait_ms)
        if result is not None:
            self._waited([result])

    def _waited(self, results: list[WaitResult]) -> None:
        for result in results:
            token = result.token
            lsn_k = self._waits.pop(token, None) if isinstance(token, int) else None
            if lsn_k is not None:
                self.on_wait(result, *lsn_k)
