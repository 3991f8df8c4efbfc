"""The simulated replica: the real ``Follower`` driven the way ``node/replica_node.py`` will.

Events in (stream messages, replies, timer ticks), actions out, carried out in order: sends
go on the simulated network, applies and bootstrap writes go to the simulated store, and a
storage failure comes back through ``Follower.storage_failed`` with the store's real position.
After each step the driver takes the coalesced ack and drains the follower's events. The
checkers run on every apply, install and step.
"""

from __future__ import annotations

from collections.abc import Callable

from kevo_repl.core.errors import StorageError
from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import (
    Action,
    ApplyRecord,
    BeginBootstrap,
    FollowerConfig,
    InstallBootstrap,
    InvariantError,
    Reconnect,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendWalSync,
    Status,
    WriteChunk,
)
from kevo_repl.testing.checkers import Checker, Violation
from kevo_repl.testing.disk import ReplicaStore
from kevo_repl.testing.messages import (
    Ack,
    Beacon,
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
    StreamMessage,
    TooOld,
    WalSync,
    WalSyncReply,
    decode_record,
)
from kevo_repl.testing.net import Network
from kevo_repl.testing.scheduler import Scheduler

__all__ = ["SimReplica"]

# Replies after which the follower may begin a bootstrap; anything else starting one is a bug.
_BOOTSTRAP_SOURCES = frozenset({"register_reply", "too_old", "chunk"})


class SimReplica:
    """One replica node: a store that survives crashes and a follower that does not."""

    def __init__(
        self,
        name: str,
        sched: Scheduler,
        net: Network,
        checker: Checker,
        config: FollowerConfig,
        follower_cls: type[Follower],
        store: ReplicaStore,
        tick_ms: int,
        checkpoint_ms: int,
    ) -> None:
        self.name, self.sched, self.net, self.checker = name, sched, net, checker
        self.config, self.follower_cls, self.store = config, follower_cls, store
        self.tick_ms, self.checkpoint_ms = tick_ms, checkpoint_ms
        self.follower: Follower | None = None
        self.incarnation = 0
        self.bootstrap_times: list[int] = []  # fresh bootstraps (not in-session restarts)
        self.install_times: list[int] = []
        self.max_applied: dict[bytes, int] = {}
        self.storage_retry_ms = 200
        # node/replica_node.py feeds follower.durable() on every timer tick from a checkpoint
        # thread's last result; stale_durable models that (a broken driver rule).
        self.stale_durable = False
        self._checkpointed_lsn = 0
        self._backlog: list[StreamMessage | Reply] | None = None  # not None while paused
        net.attach_replica(name, self.on_stream, self.on_reply)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """(Re)open the store, subscribe, and start a follower from the store's position."""
        self.incarnation += 1
        s = self.store
        f = self.follower_cls(
            self.config,
            applied_lsn=s.applied_lsn,
            durable_lsn=s.applied_lsn,
            history_id=s.history_id,
        )
        self.follower = f
        self._checkpointed_lsn = s.durable_lsn
        self.net.set_replica_up(self.name, True)
        self.sched.note(self.name, "start", applied=s.applied_lsn, history=s.history_id.hex()[:8])
        now = self.sched.now
        self._step("start", lambda: f.start(now))
        inc = self.incarnation
        self.sched.every(self.tick_ms, lambda: self._tick(inc))
        self.sched.every(self.checkpoint_ms, lambda: self._checkpoint(inc))

    def crash(self) -> None:
        self.incarnation += 1
        self.follower = None
        self._backlog = None
        self.net.set_replica_up(self.name, False)
        self.store.crash()
        self.sched.note(self.name, "crash", durable=self.store.applied_lsn)

    def pause(self, duration_ms: int) -> None:
        """SIGSTOP: nothing runs, nothing is lost; what arrives waits in the socket buffers."""
        if self._backlog is None and self.follower is not None:
            self._backlog = []
            self.sched.note(self.name, "pause", ms=duration_ms)
            self.sched.after(duration_ms, self._resume, self.incarnation)

    def resume_now(self) -> None:
        self._resume(self.incarnation)

    def _resume(self, inc: int) -> None:
        backlog, self._backlog = self._backlog, None
        if inc != self.incarnation or backlog is None:
            return
        self.sched.note(self.name, "resume", backlog=len(backlog))
        for msg in backlog:  # the driver drains its sockets, then its timers fire
            if isinstance(msg, Record | Beacon):
                self.on_stream(msg)
            else:
                self.on_reply(msg)
        self._tick(inc)

    @property
    def up(self) -> bool:
        return self.follower is not None

    # ---- events in ------------------------------------------------------------------------

    def on_stream(self, msg: StreamMessage) -> None:
        f = self.follower
        if f is None:
            return
        if self._backlog is not None:
            self._backlog.append(msg)
            return
        if isinstance(msg, Record):
            self._step(
                "record",
                lambda: f.on_record(msg.first_lsn, msg.last_lsn, msg.history_id, msg.record),
            )
        elif isinstance(msg, Beacon):
            self._step("beacon", lambda: f.on_beacon(msg.history_id, msg.last_lsn))

    def on_reply(self, msg: Reply) -> None:
        f = self.follower
        if f is None:
            return
        if self._backlog is not None:
            self._backlog.append(msg)
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
            m = msg
            self._step(
                "chunk",
                lambda: f.on_bootstrap_chunk(
                    m.session_id,
                    m.seq,
                    m.keys,
                    m.values,
                    m.progress,
                    m.is_last,
                    m.snapshot_lsn,
                    m.history_id,
                ),
            )
        elif isinstance(msg, ErrorReply):
            if msg.code == ErrorCode.NOT_REGISTERED:
                self._step("not_registered", f.on_not_registered)
            else:
                self._step("refused", lambda: f.on_request_refused(msg.code.value, msg.message))

    def _register_reply(self, f: Follower, msg: RegisterReply) -> None:
        live = f.pending_request == "register" and f.status == Status.CONNECTING
        st = self.store
        holds_other = st.applied_lsn > 0 and st.history_id not in (b"", msg.history_id)
        actions = self._step(
            "register_reply",
            lambda: f.on_register_reply(
                msg.primary_lsn, msg.retained_from_lsn, msg.history_id, msg.bootstrap_required
            ),
        )
        began = any(isinstance(a, BeginBootstrap) for a in actions)
        if live and began and holds_other and not self.config.allow_unrelated_history:
            raise Violation(
                "unrelated",
                f"{self.name} bootstraps away its data (LSN {st.applied_lsn}) for a primary of "
                "an unrelated history without --reinit",
            )
        if live and began and not msg.bootstrap_required:
            raise Violation("bootstrap", f"{self.name} bootstraps though its WAL range is retained")
        if live and msg.bootstrap_required and not began and f.status != Status.ERROR:
            raise Violation(
                "bootstrap", f"{self.name} skipped a required bootstrap ({f.status.name})"
            )

    def _tick(self, inc: int) -> bool:
        f = self.follower
        if inc != self.incarnation or f is None:
            return False
        if self._backlog is not None:
            return True  # paused
        now = self.sched.now
        if self.stale_durable:

            def timers() -> list[Action]:
                out = f.tick(now)
                f.durable(self._checkpointed_lsn)
                return out

            self._step("tick", timers)
        else:
            self._step("tick", lambda: f.tick(now))
        return True

    def _checkpoint(self, inc: int) -> bool:
        f = self.follower
        if inc != self.incarnation or f is None:
            return False
        if self._backlog is not None:
            return True  # paused
        lsn = self.store.sync()
        if self.stale_durable:
            self._checkpointed_lsn = lsn
        elif self.store.history_id == f.history_id:

            def durable() -> list[Action]:
                f.durable(lsn)
                return []

            self._step("checkpoint", durable)
        return True

    # ---- carrying out actions -------------------------------------------------------------

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
        self.checker.check_agreement(self.name, f, self.store)
        return actions

    def _execute(self, f: Follower, source: str, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._do(source, action)
            except StorageError as e:  # the rest of the list assumed this write happened
                self.sched.note(self.name, "storage_error", error=str(e))
                st = self.store
                more = f.storage_failed(
                    str(e), st.applied_lsn, self.storage_retry_ms, st.history_id
                )
                self._execute(f, "storage_failed", more)
                return

    def _do(self, source: str, a: Action) -> None:
        name, net, store = self.name, self.net, self.store
        if isinstance(a, ApplyRecord):
            first, last, history, entries = decode_record(a.record)
            if (first, last) != (a.first_lsn, a.last_lsn):
                raise Violation(
                    "apply", f"{name} ApplyRecord {a.first_lsn}..{a.last_lsn} holds {first}..{last}"
                )
            self.checker.check_apply(name, store, first, last, history, entries)
            store.apply(last, history, entries)
            self.checker.check_state(name, store)
            self.max_applied[history] = max(self.max_applied.get(history, 0), last)
            self.sched.note(name, "apply", first=first, last=last)
        elif isinstance(a, SendAck):
            net.request(name, Ack(self.config.replica_id, a.applied_lsn, a.durable_lsn))
        elif isinstance(a, SendHeartbeat):
            net.request(
                name,
                Heartbeat(
                    self.config.replica_id,
                    a.status,
                    a.applied_lsn,
                    a.durable_lsn,
                    a.bootstrap_progress,
                    a.error_message,
                ),
            )
        elif isinstance(a, SendWalSync):
            net.request(name, WalSync(a.from_lsn, a.max_bytes))
        elif isinstance(a, SendRegister):
            net.request(
                name,
                Register(self.config.replica_id, self.config.address, a.history_id, a.applied_lsn),
            )
        elif isinstance(a, SendBootstrap):
            net.request(name, Bootstrap(a.session_id, a.credit, a.chunk_bytes))
        elif isinstance(a, WriteChunk):
            store.write_chunk(a.keys, a.values)
        elif isinstance(a, BeginBootstrap):
            if source not in _BOOTSTRAP_SOURCES:
                raise Violation("bootstrap", f"{name} began a bootstrap after {source}")
            if source != "chunk":
                self.bootstrap_times.append(self.sched.now)
            store.begin_bootstrap()
        elif isinstance(a, InstallBootstrap):
            if store.boot is not None:
                self.checker.check_snapshot(name, store.boot, a.snapshot_lsn, a.history_id)
            store.install(a.snapshot_lsn, a.history_id)
            self.checker.check_state(name, store)
            self.max_applied[a.history_id] = max(
                self.max_applied.get(a.history_id, 0), a.snapshot_lsn
            )
            self.install_times.append(self.sched.now)
            self.sched.note(name, "installed", snapshot_lsn=a.snapshot_lsn)
        elif isinstance(a, Reconnect):
            net.reconnect(name)
