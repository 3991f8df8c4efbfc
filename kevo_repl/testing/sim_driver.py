"""How a simulated node drives the real ``Follower``: events in, actions carried out in order.

As ``node/upstream_source.py``: a reply or stream message becomes one follower call; the
actions it returns are carried out on the node's disk (a record goes into our own WAL byte
for byte, then into the store) and network; the coalesced ack follows, then the follower's
events are checked. A store write that fails (``StorageError``) goes back through
``Follower.storage_failed`` with what the store really holds, and the rest of the list,
which assumed it happened, is skipped. ``SimNode`` supplies the node's side (sync, the
world's hooks) by overriding the ``_node_*`` methods.
"""

from __future__ import annotations

from collections.abc import Callable

from kevo_repl.core.errors import StorageError
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
    Status,
    WriteChunk,
)
from kevo_repl.testing.checkers import Checker, Violation
from kevo_repl.testing.mesh import Mesh
from kevo_repl.testing.messages import (
    Ack,
    Batch,
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
    Rewind,
    RewindReply,
    StreamMessage,
    TooOld,
    WalSync,
    WalSyncReply,
    decode_record,
)
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_node_disk import NodeDisk
from kevo_repl.testing.sim_serving import Serving

__all__ = ["FollowerDriver"]

STORAGE_RETRY_MS = 200


class FollowerDriver:
    """The replica side of ``SimNode``: its follower, and what it did to the node's data."""

    name: str
    sched: Scheduler
    mesh: Mesh
    checker: Checker
    disk: NodeDisk
    serving: Serving
    config: FollowerConfig
    follower: Follower | None
    follower_cls: type[Follower]
    role: str
    upstream: str

    def _init_driver(self) -> None:
        self.bootstrap_times: list[int] = []  # fresh bootstraps begun (not in-session restarts)
        self.needless_bootstraps = 0  # ... though the upstream's log (or ours) covered us
        self.install_times: list[int] = []
        self.max_applied: dict[bytes, int] = {}  # per history: what we ever applied
        self.discarded: list[tuple[int, int, list[Batch] | None]] = []  # (after, to, records)
        self._covered = False  # did the last Register reply (or our WAL) cover our position?

    @property
    def bootstraps(self) -> int:
        return len(self.bootstrap_times)

    # ---- what the node supplies ---------------------------------------------------------------

    def _sync_now(self) -> None:
        raise NotImplementedError

    def _sync_soon(self) -> None:
        raise NotImplementedError

    def _node_stepped(self) -> None:
        raise NotImplementedError

    def _node_joined(self, msg: RegisterReply, before: tuple[bool, ...], began: bool) -> None:
        raise NotImplementedError

    def _node_bootstrapping(self, source: str) -> None:
        raise NotImplementedError

    def _node_applying(self, batch: Batch) -> None:
        raise NotImplementedError

    def _follow(self, upstream: str) -> None:
        """Become a replica of ``upstream`` from our data dir's position."""
        d = self.disk
        self.role, self.upstream = "replica", upstream
        self.mesh.connect(self.name, upstream)
        self.follower = f = self.follower_cls(
            self.config,
            applied_lsn=d.applied_lsn,
            durable_lsn=min(d.applied_lsn, d.synced_lsn),
            history_id=d.history_id,
            chain=d.chain,
            serve_from_lsn=d.consistent_at,
        )
        now = self.sched.now
        self._step("start", lambda: f.start(now))

    # ---- events in ----------------------------------------------------------------------------

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
            self._register_reply(f, msg)
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

    def _register_reply(self, f: Follower, m: RegisterReply) -> None:
        shared = f.chain.shared_lsn(m.chain)
        rewound_away = f.serve_from_lsn > f.applied_lsn and (shared or 0) < f.serve_from_lsn
        self._covered = (
            m.retained_from_lsn <= f.applied_lsn + 1
            and not m.bootstrap_required
            and not rewound_away
        )
        d = self.disk
        live = f.pending_request == "register" and f.status == Status.CONNECTING
        held_other = d.applied_lsn > 0 and d.history_id not in (b"", m.history_id)
        actions = self._step(
            "register_reply",
            lambda: f.on_register_reply(
                m.primary_lsn,
                m.retained_from_lsn,
                m.chain,
                m.bootstrap_required,
                upstream_is_primary=m.upstream_is_primary,
            ),
        )
        began = any(isinstance(a, BeginBootstrap) for a in actions)
        related = not f.chain or shared is not None
        self._node_joined(m, (live, held_other, related), began)

    # ---- carrying out the follower's actions --------------------------------------------------

    def _step(self, source: str, call: Callable[[], list[Action]]) -> list[Action]:
        f = self.follower
        assert f is not None
        try:
            actions = call()
            self._execute(f, source, actions)
            self._execute(f, source, f.take_ack())
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
        self._node_stepped()
        return actions

    def _execute(self, f: Follower, source: str, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._do(f, source, action)
            except StorageError as e:
                self.sched.note(self.name, "storage_error", error=str(e))
                d = self.disk
                more = f.storage_failed(str(e), d.applied_lsn, STORAGE_RETRY_MS, d.history_id)
                self._execute(f, "storage_failed", more)
                return

    def _do(self, f: Follower, source: str, a: Action) -> None:
        name, mesh, d, rid = self.name, self.mesh, self.disk, self.config.replica_id
        if isinstance(a, ApplyRecord):
            first, last, history, entries = decode_record(a.record)
            if (first, last) != (a.first_lsn, a.last_lsn) or first != d.applied_lsn + 1:
                raise Violation("apply", f"{name} at {d.applied_lsn} applies {first}..{last}")
            batch = Batch(first, last, history, entries, a.record)
            if last > d.last_lsn:  # a store that failed to apply may have it logged
                d.append(batch)  # byte for byte into our own WAL, then into the store
            self._node_applying(batch)
            d.apply(batch)
            self.max_applied[history] = max(self.max_applied.get(history, 0), last)
            self._sync_soon()
        elif isinstance(a, SendAck):
            mesh.request(name, Ack(rid, a.applied_lsn, a.durable_lsn))
        elif isinstance(a, SendHeartbeat):
            hb = Heartbeat(
                rid, a.status, a.applied_lsn, a.durable_lsn, a.bootstrap_progress, a.error_message
            )
            mesh.request(name, hb)
        elif isinstance(a, SendWalSync):
            mesh.request(name, WalSync(a.from_lsn, a.max_bytes))
        elif isinstance(a, SendRegister):
            reg = Register(rid, self.config.address, a.history_id, a.applied_lsn, a.chain)
            mesh.request(name, reg)
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
            self._execute(f, "tail_set_aside", f.on_tail_set_aside(keys))
        elif isinstance(a, RewindStore):
            d.consistent_at = a.consistent_at  # saved first, as the node does
            d.rewind(a.puts, a.lsn, a.history_id)
        elif isinstance(a, BeginBootstrap):
            if source != "chunk":
                self.bootstrap_times.append(self.sched.now)
                self.needless_bootstraps += self._covered and source != "too_old"
                self.sched.note(name, "bootstrap", source=source, covered=self._covered)
                self._node_bootstrapping(source)
            d.begin_bootstrap()
        elif isinstance(a, WriteChunk):
            d.write_chunk(a.keys, a.values)
        elif isinstance(a, InstallBootstrap):
            d.install(a.snapshot_lsn, a.history_id)
            self.serving.sessions.clear()
            self.serving.registry.note_commit(a.snapshot_lsn, self.sched.now)
            self.max_applied[a.history_id] = max(
                self.max_applied.get(a.history_id, 0), a.snapshot_lsn
            )
            self.install_times.append(self.sched.now)
            self.sched.note(name, "installed", snapshot_lsn=a.snapshot_lsn)
        elif isinstance(a, Reconnect):
            mesh.connect(name, self.upstream)

    @property
    def lsn(self) -> int:
        return self.disk.applied_lsn
