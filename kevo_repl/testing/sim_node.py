"""A simulated node of either role: one data dir, one serving side, two sources of records.

As ``node/node.py``: a *primary* seals client writes into its WAL (group commit: sync, then
apply, then publish); a *replica* drives the real ``Follower`` (``sim_driver.py``) and
appends what it receives to its own WAL byte for byte, applies it, and publishes it to its
own followers once it is durable. Both serve the same replication side (``sim_serving.py``)
and run the same retention. Role changes keep the data dir: ``promote`` forks a new history
at the last LSN (chain saved first), ``repoint`` follows another node from the current
position, ``handover`` stops writes. Faults: ``crash`` (power loss), ``pause`` (SIGSTOP:
everything queues in the sockets), ``reinit`` (the data dir wiped while down).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import Action, FollowerConfig
from kevo_repl.core.history import NEVER_FOLLOWED, HistoryChain
from kevo_repl.core.registry import WaitResult
from kevo_repl.testing.checkers import Checker
from kevo_repl.testing.mesh import Mesh, MeshHandlers
from kevo_repl.testing.messages import (
    Batch,
    Beacon,
    Entry,
    Record,
    Register,
    RegisterReply,
    Reply,
    Request,
    StreamMessage,
    apply_entries,
    encode_record,
)
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_driver import FollowerDriver
from kevo_repl.testing.sim_node_disk import NodeDisk
from kevo_repl.testing.sim_serving import Serving, ServingParams

__all__ = ["NodeHooks", "NodeParams", "SimNode"]


def _nothing(*_args: object) -> None:
    return None


@dataclass(slots=True)
class NodeHooks:
    """What the world learns from a node (its oracle and checks)."""

    committed: Callable[[Batch, dict[bytes, bytes]], None]  # a primary's durable batch
    forked: Callable[[HistoryChain], None]  # a promotion's chain, saved
    waited: Callable[[WaitResult, int, int, bytes], None]  # (result, lsn, k, history)
    stepped: Callable[[SimNode], None]  # after every event: the per-step checks
    registering: Callable[[SimNode, Register], None] = _nothing  # a follower's Register in
    joined: Callable[[SimNode, RegisterReply, tuple[bool, ...], bool], None] = _nothing
    bootstrapping: Callable[[SimNode, str], None] = _nothing  # (node, what started it)
    applying: Callable[[SimNode, Batch], None] = _nothing  # before the store applies it
    dropped: Callable[[SimNode, bool, int], None] = _nothing  # retention: (capped, old floor)


@dataclass(slots=True)
class NodeParams:
    """A node's timers, retention and storage faults (the defaults: the failover world's)."""

    tick_ms: int = 40  # the follower's timers
    timers_ms: int = 100  # checkpoint, registry tick, beacon, retention
    group_commit_ms: int = 2  # a primary's write to its fdatasync
    sync_ms: int = 1  # a replica's apply to its fdatasync
    keep_entries: int = 0  # retention floor in entries (0: the WAL keeps everything)
    cap_entries: int = 0  # retention's hard cap
    segment_entries: int = 16
    fail_rate: float = 0.0  # store failures per apply
    boot_fail_rate: float = 0.0  # ... per bootstrap chunk and install
    config: FollowerConfig | None = None  # None: the failover world's
    serving: ServingParams = field(default_factory=ServingParams)


class SimNode(FollowerDriver):
    def __init__(
        self,
        name: str,
        sched: Scheduler,
        rng: random.Random,
        mesh: Mesh,
        checker: Checker,
        hooks: NodeHooks,
        follower_cls: type[Follower] = Follower,
        params: NodeParams | None = None,
    ) -> None:
        self.name, self.sched, self.rng, self.mesh = name, sched, rng, mesh
        self.checker, self.hooks, self.follower_cls = checker, hooks, follower_cls
        self.p = p = params or NodeParams()
        self.config = p.config or FollowerConfig(
            name, name, primary_timeout_ms=800, request_timeout_ms=400
        )
        self.disk = self._new_disk()
        self.serving = Serving(
            self.disk,
            lambda peer, msg: mesh.reply(name, peer, msg),
            lambda: self.role == "primary",
            self.consistent,
            lambda: sched.now,
            p.serving,
        )
        self.serving.on_released = self._released
        self.role = "down"  # or "primary", "replica"
        self.upstream = ""
        self.follower: Follower | None = None
        self.incarnation = 0
        self._init_driver()
        self._waits: dict[int, tuple[int, int, bytes]] = {}
        self._next_token = 1
        self._sync_due = False
        self._backlog: list[Callable[[], None]] | None = None  # not None while paused
        self.reuse_history = False  # a broken rule: promote without a fork point
        self.stale_durable = False  # a broken rule: report a durable LSN a bootstrap voided
        self._stale_lsn = 0
        mesh.attach(name, MeshHandlers(self._in_request, self._in_reply, self._in_stream))

    def _new_disk(self) -> NodeDisk:
        p = self.p
        return NodeDisk(self.rng, p.fail_rate, p.boot_fail_rate, p.segment_entries)

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
        self._stale_lsn = self.disk.synced_lsn
        inc = self.incarnation
        if upstream:
            self._follow(upstream)
        else:
            if not self.disk.chain:
                self.disk.chain = HistoryChain.root(self.rng.randbytes(16))
            self.role = "primary"
        self.sched.every(self.p.timers_ms, lambda: self._timers(inc), first_ms=self.sched.now)
        self.sched.every(self.p.tick_ms, lambda: self._follower_tick(inc))
        history = self.disk.chain.current.hex()[:8]
        self.sched.note(
            self.name, "start", role=self.role, upstream=upstream, lsn=self.lsn, history=history
        )

    def crash(self) -> None:
        """Power loss: the unsynced WAL tail partly lost, the store back to its checkpoint."""
        was_primary = self.role == "primary"
        self.incarnation += 1
        self.role, self.follower = "down", None  # ``upstream``: what it followed, kept
        self.mesh.set_up(self.name, False)
        self._waits.clear()
        self._sync_due = False
        self._backlog = None
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

    def reinit(self) -> None:
        """The data dir was wiped (the node is down): it starts again with a new history."""
        self.disk = self.serving.disk = self._new_disk()
        self.sched.note(self.name, "reinit")

    def pause(self, duration_ms: int) -> None:
        """SIGSTOP: nothing runs, nothing is lost; what arrives waits in the socket buffers."""
        if self.up and self._backlog is None:
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
        for deliver in backlog:  # the node drains its sockets, then its timers fire
            deliver()
        if self.disk.unsynced:
            self._schedule_sync(self.p.group_commit_ms)
        self._follower_tick(inc)

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

    # ---- client writes (primary) ------------------------------------------------------------

    def write(self, entries: tuple[Entry, ...], wait: int, wait_ms: int) -> bool:
        if self.role != "primary" or self.serving.fenced:
            return False
        if self._backlog is not None:  # queued in the socket (waits not modelled across it)
            self._backlog.append(lambda: self._write(entries, 0, 0))
            return True
        self._write(entries, wait, wait_ms)
        return True

    def _write(self, entries: tuple[Entry, ...], wait: int, wait_ms: int) -> None:
        if self.role != "primary" or self.serving.fenced:
            return
        d = self.disk
        first = d.last_lsn + 1
        last = first + len(entries) - 1
        history = d.chain.current
        d.append(Batch(first, last, history, entries, encode_record(first, last, history, entries)))
        if wait:
            token, self._next_token = self._next_token, self._next_token + 1
            self._waits[token] = (last, wait, history)
            self.sched.after(3, self._park, self.incarnation, token, wait_ms)
        self._schedule_sync(self.p.group_commit_ms)

    def _park(self, inc: int, token: int, wait_ms: int) -> None:
        if inc != self.incarnation or token not in self._waits:
            return
        lsn, k, _ = self._waits[token]
        if lsn > self.disk.synced_lsn or self._backlog is not None:
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

    # ---- the WAL: sync, publish, retention --------------------------------------------------

    def _schedule_sync(self, delay_ms: int) -> None:
        if not self._sync_due:
            self._sync_due = True
            self.sched.after(delay_ms, self._sync, self.incarnation)

    def _sync(self, inc: int) -> None:
        if inc == self.incarnation:
            self._sync_due = False
            if self._backlog is None:  # paused: the resume syncs
                self._sync_now()

    def _sync_now(self) -> None:
        """fdatasync, then (primary) apply and commit, then publish and tell the registry."""
        d = self.disk
        done = d.sync()
        for batch in done:
            if self.role == "primary":
                apply_entries(d.state, batch.entries)
                d.applied_lsn, d.history_id = batch.last_lsn, batch.history_id
                self.hooks.committed(batch, d.state)
            self.mesh.publish(
                self.name, Record(batch.first_lsn, batch.last_lsn, batch.history_id, batch.record)
            )
        if done:
            self.serving.registry.note_commit(d.synced_lsn, self.sched.now)
            self._stale_lsn = max(self._stale_lsn, d.synced_lsn)
            f = self.follower
            if f is not None:
                self._step("durable", lambda: _durable(f, d.synced_lsn))
            self.hooks.stepped(self)
            self._retain()

    def _retain(self) -> None:
        """Drop the WAL segments no follower needs (``core/retention.py``), as the node."""
        p = self.p
        if p.keep_entries:
            floor = self.serving.registry.retention_floor()
            dropped = self.disk.retain(floor, p.keep_entries, p.cap_entries)
            if dropped is not None:
                self.hooks.dropped(self, *dropped)

    def _timers(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        if self._backlog is None:
            self.disk.checkpoint()
            self.serving.tick()
            self._beacon()
            self._retain()
        return True

    def _beacon(self) -> None:
        self.mesh.publish(self.name, Beacon(self.disk.chain.current, self.disk.synced_lsn))

    def _follower_tick(self, inc: int) -> bool:
        if inc != self.incarnation:
            return False
        f = self.follower
        if f is not None and self._backlog is None:
            now, stale = self.sched.now, self._stale_lsn if self.stale_durable else 0
            self._step("tick", lambda: f.tick(now) + _durable(f, stale))
        return True

    # ---- events in (queued while paused) -------------------------------------------------------

    def _held(self, deliver: Callable[[], None]) -> bool:
        """While paused, keep ``deliver`` for the resume (True: kept)."""
        if self._backlog is not None:
            self._backlog.append(deliver)
        return self._backlog is not None

    def _in_request(self, peer: bytes, name: str, msg: Request) -> None:
        if self.up and not self._held(lambda: self._in_request(peer, name, msg)):
            if isinstance(msg, Register):
                self.hooks.registering(self, msg)
            self.serving.on_request(peer, msg)

    def _in_reply(self, peer: bytes, msg: Reply) -> None:
        if not self._held(lambda: self._in_reply(peer, msg)):
            self._on_reply(peer, msg)

    def _in_stream(self, server: str, msg: StreamMessage) -> None:
        if not self._held(lambda: self._in_stream(server, msg)):
            self._on_stream(server, msg)

    # ---- the driver's side of the node ----------------------------------------------------------

    def _sync_soon(self) -> None:
        self._schedule_sync(self.p.sync_ms)

    def _node_stepped(self) -> None:
        self.hooks.stepped(self)

    def _node_joined(self, msg: RegisterReply, before: tuple[bool, ...], began: bool) -> None:
        self.hooks.joined(self, msg, before, began)

    def _node_bootstrapping(self, source: str) -> None:
        self.hooks.bootstrapping(self, source)

    def _node_applying(self, batch: Batch) -> None:
        self.hooks.applying(self, batch)


def _durable(f: Follower, lsn: int) -> list[Action]:
    f.durable(lsn)
    return []
