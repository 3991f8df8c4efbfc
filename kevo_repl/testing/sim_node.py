"""A simulated node of either role: one data dir, one serving side, two sources of records.

As ``node/node.py``: a *primary* seals client writes into its WAL (group commit: sync, then
apply, then publish); a *replica* drives the real ``Follower`` and appends what it receives
to its own WAL byte for byte, applies it, and publishes it to its own followers once it is
durable. Both serve the same replication side (``sim_serving.py``). Role changes keep the
data dir: ``promote`` forks a new history at the last LSN (chain saved first),
``repoint`` follows another node from the current position, ``handover`` stops writes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import (
    Action,
    ApplyRecord,
    BeginBootstrap,
    DiscardTail,
    FollowerConfig,
    InstallBootstrap,
    InvariantError,
    Reconnect,
    RewindStore,
    SaveChain,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendRewind,
    SendWalSync,
    WriteChunk,
)
from kevo_repl.core.history import NEVER_FOLLOWED, HistoryChain
from kevo_repl.core.registry import WaitResult
from kevo_repl.testing.checkers import Checker, Violation
from kevo_repl.testing.disk import Batch, apply_entries
from kevo_repl.testing.mesh import Mesh, MeshHandlers
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
    Reply,
    Request,
    Rewind,
    RewindReply,
    StreamMessage,
    TooOld,
    WalSync,
    WalSyncReply,
    decode_record,
    encode_record,
)
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_node_disk import NodeDisk
from kevo_repl.testing.sim_serving import Serving

__all__ = ["NodeHooks", "SimNode"]


@dataclass(slots=True)
class NodeHooks:
    """What the world learns from a node (its oracle and checks)."""

    committed: Callable[[Batch, dict[bytes, bytes]], None]  # a primary's durable batch
    forked: Callable[[HistoryChain], None]  # a promotion's chain, saved
    waited: Callable[[WaitResult, int, int, bytes], None]  # (result, lsn, k, history)
    stepped: Callable[[SimNode], None]  # after every event: the per-step checks


class SimNode:
    def __init__(
        self,
        name: str,
        sched: Scheduler,
        rng: random.Random,
        mesh: Mesh,
        checker: Checker,
        hooks: NodeHooks,
        follower_cls: type[Follower] = Follower,
    ) -> None:
        self.name, self.sched, self.rng, self.mesh = name, sched, rng, mesh
        self.checker, self.hooks, self.follower_cls = checker, hooks, follower_cls
        self.disk = NodeDisk()
        self.serving = Serving(
            self.disk,
            lambda peer, msg: mesh.reply(name, peer, msg),
            lambda: self.role == "primary",
            self.consistent,
            lambda: sched.now,
        )
        self.serving.on_released = self._released
        self.role = "down"  # or "primary", "replica"
        self.upstream = ""
        self.follower: Follower | None = None
        self.incarnation = 0
        self.bootstraps = 0  # fresh bootstraps begun
        self.needless_bootstraps = 0  # ... though the upstream's log (or ours) covered us
        self._covered = False  # did the last Register reply (or our WAL) cover our position?
        self.discarded: list[tuple[int, int, list[Batch] | None]] = []  # (after, to, records)
        self._waits: dict[int, tuple[int, int, bytes]] = {}
        self._next_token = 1
        self._sync_due = False
        self.reuse_history = False  # a broken rule: promote without a fork point
        mesh.attach(name, MeshHandlers(self._on_request, self._on_reply, self._on_stream))

    # ---- lifecycle and role changes ---------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.role != "down"

    def consistent(self) -> bool:
        """A primary always is; a replica once it is no longer copying (``Follower``)."""
        return self.role == "primary" or (self.follower is not None and self.follower.consistent)

    def start(self, upstream: str = "") -> None:
        """Start as a primary (no upstream; a fresh one takes a root history) or a replica."""
        self.incarnation += 1
        self.mesh.set_up(self.name, True)
        self.serving.reset()
        inc = self.incarnation
        if upstream:
            self._follow(upstream)
        else:
            if not self.disk.chain:
                self.disk.chain = HistoryChain.root(self.rng.randbytes(16))
            self.role = "primary"
        self.sched.every(100, lambda: self._timers(inc), first_ms=self.sched.now)
        self.sched.every(40, lambda: self._follower_tick(inc))
        self.sched.note(self.name, "start", role=self.role, upstream=upstream, lsn=self.lsn)

    def crash(self) -> None:
        """Power loss: the unsynced WAL tail partly lost, the store back to its checkpoint."""
        was_primary = self.role == "primary"
        self.incarnation += 1
        self.role, self.follower = "down", None  # ``upstream``: what it followed, kept
        self.mesh.set_up(self.name, False)
        self._waits.clear()
        self._sync_due = False
        d = self.disk
        kept = d.crash(self.rng)
        if was_primary and kept:  # complete records on disk are committed on recovery
            state = dict(d.ckpt_state)
            for batch in d.log:
                if batch.last_lsn > d.ckpt_lsn:
                    apply_entries(state, batch.entries)
                    if batch in kept:
                        self.hooks.committed(batch, state)
        self.sched.note(self.name, "crash", lsn=self.lsn, recovered=len(kept))

    def promote(self, crash_mid_way: bool = False) -> str:
        """Fork a new history at our last LSN; returns why not ("" when done)."""
        f = self.follower
        if self.role != "replica" or f is None:
            return "not a replica"
        if not f.consistent:
            return "copying its upstream's data"
        if not self.disk.chain:
            return NEVER_FOLLOWED
        self._sync_now()  # everything received is in the WAL, applied and synced
        fork = self.disk.last_lsn
        if not self.reuse_history:
            self.disk.chain = self.disk.chain.extend(self.rng.randbytes(16), fork)
            self.hooks.forked(self.disk.chain)
        if crash_mid_way:  # the chain is saved, the role never changed
            self.crash()
            return "crashed mid-way"
        self.follower, self.upstream, self.role = None, "", "primary"
        self.mesh.connect(self.name, "")
        self.serving.fenced = ""
        self.sched.note(self.name, "promoted", fork=fork, history=self.disk.chain.current.hex()[:8])
        self._beacon()
        return ""

    def repoint(self, upstream: str) -> None:
        """Follow ``upstream`` from our position (a primary so demoted)."""
        self._sync_now()
        self._waits.clear()  # a demoted primary's parked writes get no answer
        self._follow(upstream)
        self.sched.note(self.name, "repointed", upstream=upstream, lsn=self.lsn)

    def handover(self) -> int:
        """Accept no writes; every write so far is durable and published: our last LSN."""
        self.serving.fenced = "handing over"
        self._sync_now()
        return self.disk.synced_lsn

    def _follow(self, upstream: str) -> None:
        d = self.disk
        self.role, self.upstream = "replica", upstream
        self.mesh.connect(self.name, upstream)
        self.follower = f = self.follower_cls(
            FollowerConfig(self.name, self.name, primary_timeout_ms=800, request_timeout_ms=400),
            applied_lsn=d.applied_lsn,
            durable_lsn=min(d.applied_lsn, d.synced_lsn),
            history_id=d.history_id,
            chain=d.chain,
            serve_from_lsn=d.consistent_at,
        )
        now = self.sched.now
        self._step("start", lambda: f.start(now))

    @property
    def lsn(self) -> int:
        return self.disk.applied_lsn

    # ---- client writes (primary) ------------------------------------------------------------

    def write(self, entries: tuple[Entry, ...], wait: int, wait_ms: int) -> bool:
        if self.role != "primary" or self.serving.fenced:
            return False
        d = self.disk
        first = d.last_lsn + 1
        last = first + len(entries) - 1
        history = d.chain.current
        d.append(Batch(first, last, history, entries, encode_record(first, last, history, entries)))
        if wait:
            token, self._next_token = self._next_token, self._next_token + 1
            self._waits[token] = (last, wait, history)
            self.sched.after(3, self._park, self.incarnation, token, wait_ms)
        self._schedule_sync(2)
        return True

    def _park(self, inc: int, token: int, wait_ms: int) -> None:
        if inc != self.incarnation or token not in self._waits:
            return
        lsn, k, _ = self._waits[token]
        if lsn > self.disk.synced_lsn:
            self.sched.after(2, self._park, inc, token, wait_ms)
            return
        result = self.serving.registry.wait_for(token, lsn, k, self.sched.now + wait_ms)
        if result is not None:
            self._released([result])

    def _released(self, results: list[WaitResult]) -> None:
        for result in results:
            token = result.token
            found = self._waits.pop(token, None) if isinstance(token, int) else None
            if found is not None:
                self.hooks.waited(result, *found)

    # ---- the WAL: sync, publish -------------------------------------------------------------

    def _schedule_sync(self, delay_ms: int) -> None:
        if not self._sync_due:
            self._sync_due = True
            self.sched.after(delay_ms, self._sync, self.incarnation)

    def _sync(self, inc: int) -> None:
        if inc == self.incarnation:
            self._sync_due = False
            self._sync_now()

    def _sync_now(self) -> None:
        """fdatasync, then (primary) apply and commit, then publish and tell the registry."""
        done = self.disk.sync()
        for batch in done:
            if self.role == "primary":
                self.disk.apply(batch)
                self.hooks.committed(batch, self.disk.state)
            self.mesh.publish(
                self.name, Record(batch.first_lsn, batch.last_lsn, batch.history_id, batch.record)
            )
        if done:
            self.serving.registry.note_commit(self.disk.synced_lsn, self.sched.now)
            f = self.follower
            if f is not None:
                self._step("durable", lambda: _durable(f, self.disk.synced_lsn))
            self.hooks.stepped(self)

    def _timers(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        self.disk.checkpoint()
        self.serving.tick()
        self._beacon()
        return True

    def _beacon(self) -> None:
        self.mesh.publish(self.name, Beacon(self.disk.chain.current, self.disk.synced_lsn))

    def _follower_tick(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        f = self.follower
        if f is not None:
            now = self.sched.now
            self._step("tick", lambda: f.tick(now))
        return True

    # ---- events in --------------------------------------------------------------------------

    def _on_request(self, peer: bytes, _name: str, msg: Request) -> None:
        if self.up:
            self.serving.on_request(peer, msg)

    def _on_stream(self, _server: str, msg: StreamMessage) -> None:
        f = self.follower
        if f is None:
            return
        if isinstance(msg, Record):
            m = msg
            self._step(
                "record", lambda: f.on_record(m.first_lsn, m.last_lsn, m.history_id, m.record)
            )
        else:
            b = msg
            self._step("beacon", lambda: f.on_beacon(b.history_id, b.last_lsn))

    def _on_reply(self, _peer: bytes, msg: Reply) -> None:
        f = self.follower
        if f is None:
            return
        if isinstance(msg, RegisterReply):
            m = msg
            shared = f.chain.shared_lsn(m.chain)
            rewound_away = f.serve_from_lsn > f.applied_lsn and (shared or 0) < f.serve_from_lsn
            self._covered = (
                m.retained_from_lsn <= f.applied_lsn + 1
                and not m.bootstrap_required
                and not rewound_away
            )
            self._step(
                "register_reply",
                lambda: f.on_register_reply(
                    m.primary_lsn,
                    m.retained_from_lsn,
                    m.chain,
                    m.bootstrap_required,
                    upstream_is_primary=m.upstream_is_primary,
                ),
            )
        elif isinstance(msg, HeartbeatReply):
            self._step("heartbeat_reply", lambda: f.on_heartbeat_reply(msg.primary_lsn))
        elif isinstance(msg, WalSyncReply):
            records = [(r.first_lsn, r.last_lsn, r.history_id, r.record) for r in msg.records]
            self._step("wal_sync_reply", lambda: f.on_wal_sync_reply(records, msg.primary_lsn))
        elif isinstance(msg, TooOld):
            self._step("too_old", lambda: f.on_too_old(msg.retained_from_lsn))
        elif isinstance(msg, BootstrapChunk):
            c = msg
            self._step(
                "chunk",
                lambda: f.on_bootstrap_chunk(
                    c.session_id,
                    c.seq,
                    c.keys,
                    c.values,
                    c.progress,
                    c.is_last,
                    c.snapshot_lsn,
                    c.history_id,
                ),
            )
        elif isinstance(msg, RewindReply):
            r = msg
            self._step(
                "rewind_reply", lambda: f.on_rewind_reply(r.snapshot_lsn, r.keys, r.values, r.found)
            )
        elif isinstance(msg, ErrorReply):
            if msg.code == ErrorCode.NOT_REGISTERED:
                self._step("not_registered", f.on_not_registered)
            else:
                self._step("refused", lambda: f.on_request_refused(msg.code.value, msg.message))

    # ---- carrying out the follower's actions ------------------------------------------------

    def _step(self, source: str, call: Callable[[], list[Action]]) -> None:
        f = self.follower
        assert f is not None
        try:
            self._execute(source, call())
            self._execute(source, f.take_ack())
        except InvariantError as e:
            raise Violation("follower", f"{self.name} InvariantError after {source}: {e}") from e
        events = f.drain_events()
        for event, fields in events:
            self.sched.note(self.name, event, **fields)
        self.checker.check_events(self.name, events)
        if self.follower is f and f.applied_lsn != self.disk.applied_lsn:
            raise Violation(
                "agreement", f"{self.name} follower at {f.applied_lsn}, store at {self.lsn}"
            )
        self.hooks.stepped(self)

    def _execute(self, source: str, actions: list[Action]) -> None:
        for action in actions:
            self._do(source, action)

    def _do(self, source: str, a: Action) -> None:
        name, mesh, d, f = self.name, self.mesh, self.disk, self.follower
        assert f is not None
        if isinstance(a, ApplyRecord):
            first, last, history, entries = decode_record(a.record)
            if (first, last) != (a.first_lsn, a.last_lsn) or first != d.applied_lsn + 1:
                raise Violation("apply", f"{name} at {d.applied_lsn} applies {first}..{last}")
            batch = Batch(first, last, history, entries, a.record)
            d.append(batch)  # byte for byte into our own WAL, then into the store
            d.apply(batch)
            self._schedule_sync(1)
        elif isinstance(a, SendAck):
            mesh.request(name, Ack(name, a.applied_lsn, a.durable_lsn))
        elif isinstance(a, SendHeartbeat):
            hb = Heartbeat(
                name, a.status, a.applied_lsn, a.durable_lsn, a.bootstrap_progress, a.error_message
            )
            mesh.request(name, hb)
        elif isinstance(a, SendWalSync):
            mesh.request(name, WalSync(a.from_lsn, a.max_bytes))
        elif isinstance(a, SendRegister):
            mesh.request(name, Register(name, name, a.history_id, a.applied_lsn, a.chain))
        elif isinstance(a, SendBootstrap):
            mesh.request(name, Bootstrap(a.session_id, a.credit, a.chunk_bytes))
        elif isinstance(a, SendRewind):
            mesh.request(name, Rewind(a.keys))
        elif isinstance(a, SaveChain):
            d.chain = a.chain
        elif isinstance(a, DiscardTail):
            self._sync_now()
            tail = d.tail_after(a.after_lsn)
            self.discarded.append((a.after_lsn, a.applied_lsn, tail))
            self._covered = tail is not None
            keys = None if tail is None else [k for b in tail for _, k, _ in b.entries]
            self.sched.note(name, "tail_discarded", after=a.after_lsn, to=a.applied_lsn)
            self._execute("tail_set_aside", f.on_tail_set_aside(keys))
        elif isinstance(a, RewindStore):
            d.consistent_at = a.consistent_at  # saved first, as the node does
            for key, value in a.puts:
                if value is None:
                    d.state.pop(key, None)
                else:
                    d.state[key] = value
            d.reset(a.lsn, a.history_id)
        elif isinstance(a, BeginBootstrap):
            if source != "chunk":
                self.bootstraps += 1
                self.needless_bootstraps += self._covered and source != "too_old"
                self.sched.note(name, "bootstrap", source=source, covered=self._covered)
            d.boot = {}
        elif isinstance(a, WriteChunk):
            assert d.boot is not None
            d.boot.update(zip(a.keys, a.values, strict=True))
        elif isinstance(a, InstallBootstrap):
            assert d.boot is not None
            d.state, d.boot, d.consistent_at = d.boot, None, 0
            d.reset(a.snapshot_lsn, a.history_id)
            self.serving.sessions.clear()
            self.serving.registry.note_commit(a.snapshot_lsn, self.sched.now)
        elif isinstance(a, Reconnect):
            mesh.connect(name, self.upstream)


def _durable(f: Follower, lsn: int) -> list[Action]:
    f.durable(lsn)
    return []
