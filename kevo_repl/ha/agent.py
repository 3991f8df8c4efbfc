"""A member's agent: holds or watches the leader key in etcd and drives its node to match.

It runs on a thread beside the node's loop and changes the node only through
``Node.call_in_loop`` (promote, repoint, hand over, status) and ``Node.lease_writes``.
Each turn (every TTL/3, and at once on a watch event about someone else's key):

1. **renew** the member's lease. The leader key and the member's record are bound to it;
   a renewal sent at ``t`` keeps it alive on etcd until at least ``t + TTL``, so the node
   is told to accept writes only until ``t + TTL - margin``. The node checks that deadline
   itself before each write, so a leader that cannot renew (etcd gone, a partition, this
   thread stalled) stops accepting writes **before** the key can expire and another member
   take it (self-fencing; the node's loop needs nothing from this thread to do so);
2. **read** the scope in one range, and the node's status;
3. **act**: the leader keeps its node a writable primary and publishes its position; a
   follower points its node at the leader once the leader's node says it is primary; with
   no leader, every member publishes a fresh record and the most advanced eligible one
   (``core/election.py``) takes the key in a transaction that checks no record changed
   since it read them;
4. **publish** its own record when its role changed, or its position at most once a turn.

Nothing is promoted without etcd: a follower that cannot reach it keeps following (and
serving reads); a leader that cannot reach it fences itself when its lease would end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kevo_repl.adapters.clock import monotonic_ms, wall_us
from kevo_repl.adapters.etcd_kv import EtcdKV, EtcdUnavailable, WatchEvent
from kevo_repl.core.election import (
    Failover,
    LeaderRecord,
    MemberRecord,
    OpTime,
    Scope,
    choose_leader,
    not_yet_fresh,
)
from kevo_repl.ha.handover import Handover
from kevo_repl.ha.scope import ScopeKeys, read_scope
from kevo_repl.node import roles
from kevo_repl.node_status import NodeStatus
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["Agent"]

_FAST_S = 0.05  # a turn this soon while something is changing (no leader, a handover)


class Agent:
    """One member of a scope: ``join()`` before its node starts, ``start(node)`` after."""

    def __init__(
        self,
        kv: EtcdKV,
        keys: ScopeKeys,
        member_id: str,
        address: str,
        ttl_s: int,
        max_lag: int,
        log: Any,
    ) -> None:
        self.kv, self.keys, self.id, self.address = kv, keys, member_id, address
        self.ttl_s = ttl_s
        self.max_lag = max_lag
        self.log = log
        self.interval_s = ttl_s / 3
        self.margin_ms = max(300, ttl_s * 100)
        self.lease = 0
        self.lease_alive_until = 0  # monotonic ms: our lease certainly lives until then
        self._last_renew = 0.0
        self.node: Node | None = None
        self.etcd_ok = True
        self._events: queue.SimpleQueue[WatchEvent] = queue.SimpleQueue()
        self._cancel_watch: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: MemberRecord | None = None
        self._published_at = 0.0
        self._leaderless_since = 0  # the revision at which we saw the leader gone (logs)
        self._said = ""  # the last election verdict logged (said once, not every turn)
        self._optime: OpTime | None = None
        self.handover: Handover | None = None
        self._unreachable_since = 0.0

    # ---- start -------------------------------------------------------------------------------

    def join(self, data_dir: Path, wait_s: float = 3600.0) -> tuple[str, bool]:
        """Before the node starts: its upstream ("" = primary) and whether it holds the key
        (``ha/joining.py``)."""
        from kevo_repl.ha.joining import join_scope

        return join_scope(self, data_dir, wait_s)

    def start(self, node: Node, holds_key: bool) -> None:
        """Attach the node (before its loop runs) and start the agent's thread."""
        self.node = node
        if holds_key:
            node.lease_writes(self.lease_alive_until - self.margin_ms)
        else:
            node.lease_writes(0)
        self._thread = threading.Thread(target=self._run, name="etcd-agent", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop: give up the key and the record at once (revoke), so failover needs no TTL."""
        self._stop.set()
        self._events.put(WatchEvent("", "", False, 0))
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._cancel_watch is not None:
            self._cancel_watch()
        if self.node is not None:
            self.node.lease_writes(0)
        if self.lease:
            with contextlib.suppress(EtcdUnavailable):
                self.kv.revoke(self.lease)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            self._wait(delay)
            if self._stop.is_set():
                return
            try:
                delay = self._turn()
            except EtcdUnavailable as exc:
                if self.etcd_ok:
                    self.log.error("etcd_unreachable", etcd=self.kv.where, error=str(exc))
                    self._unreachable_since = time.monotonic()
                self.etcd_ok = False
                self._note_unreachable(str(exc))
                self._drop_watch()
                delay = min(self.interval_s, 0.5)
            except LookupError:  # our lease ended under a write bound to it: renew now
                self._last_renew = 0.0
                delay = _FAST_S
            except Exception as exc:  # a bug here must not take the node down with it
                self.log.error("agent_turn_failed", error=repr(exc), exc_info=True)
                delay = self.interval_s

    def _wait(self, delay: float) -> None:
        """Until ``delay`` passes or an event about another key arrives."""
        own = (self.keys.member(self.id), self.keys.optime)
        end = time.monotonic() + delay
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                return
            if event.key == "":
                self._cancel_watch = None  # ended: the next turn watches again
                return
            if event.key not in own:
                return

    def _note(self, text: str) -> None:
        """What ``status`` of this node shows as its coordinator."""
        assert self.node is not None
        self.node.coordinator = f"etcd {self.kv.where} scope {self.keys.name}: {text}"

    def _note_unreachable(self, error: str) -> None:
        assert self.node is not None
        down = time.monotonic() - self._unreachable_since
        left_ms = (self.node.writes_until_ms or 0) - monotonic_ms()
        then = (
            f"accepting writes for {left_ms / 1000:.1f} s more (until its lease would end)"
            if left_ms > 0 and self.node.role == pb.ROLE_PRIMARY
            else "serving reads; nothing is promoted without etcd"
        )
        self._note(f"unreachable for {down:.1f} s ({error[:120]}); {then}")

    def _drop_watch(self) -> None:
        if self._cancel_watch is not None:
            self._cancel_watch()
            self._cancel_watch = None

    def _turn(self) -> float:
        node = self.node
        assert node is not None
        local = self._local_status()
        if local is None:
            return self.interval_s  # the node is stalled: no renewal, so no false liveness
        if time.monotonic() - self._last_renew >= self.interval_s:
            self.renew()
        scope = read_scope(self.kv, self.keys)
        if not self.etcd_ok:
            self.log.warning("etcd_reachable_again", etcd=self.kv.where)
            self.etcd_ok = True
        if self._cancel_watch is None:
            self._cancel_watch = self.kv.watch_prefix(
                self.keys.prefix, scope.revision + 1, self._events.put
            )
        return self._act(scope, local)

    def renew(self) -> None:
        sent = monotonic_ms()
        try:
            ttl = self.kv.refresh(self.lease) if self.lease else -1
        except LookupError:
            ttl = -1
        if ttl < 0:  # expired (or the first): a new lease; what was bound to the old is gone
            if self.lease:
                self.log.error("lease_expired", lease=self.lease)
            self.lease = self.kv.grant(self.ttl_s)
            ttl = self.ttl_s
            self._published = None
        self._last_renew = time.monotonic()
        self.lease_alive_until = sent + ttl * 1000

    def _local_status(self) -> NodeStatus | None:
        node = self.node
        assert node is not None
        fut = node.call_in_loop(
            lambda: NodeStatus.from_message(node.requests.status(monotonic_ms()))
        )
        try:
            return fut.result(timeout=self.interval_s)  # type: ignore[no-any-return]
        except CancelledError:
            return None  # the node's loop has ended
        except FutureTimeout:
            fut.cancel()
            self.log.error("node_not_answering", waited_s=self.interval_s)
            return None

    def in_loop(self, fn: Any) -> Any:
        assert self.node is not None
        return self.node.call_in_loop(fn).result(timeout=10)

    # ---- deciding ----------------------------------------------------------------------------

    def _act(self, scope: Scope, local: NodeStatus) -> float:
        node = self.node
        assert node is not None
        leader = scope.leader
        if leader is not None and leader.id == self.id and scope.leader_lease != self.lease:
            if not self.rebind(scope):
                return _FAST_S
            scope = read_scope(self.kv, self.keys)
            leader = scope.leader
        if leader is not None and leader.id == self.id:
            self._note("this member holds the leader key")
            return self._lead(scope, local)
        if self.handover is not None:
            self.handover = None
        node.lease_writes(0, leader.addr if leader else "")
        if leader is not None:
            self._note(f"leader {leader.id} at {leader.addr}")
            self._leaderless_since = 0
            self._publish(local, leader)
            theirs = scope.members.get(leader.id)
            if theirs is None or theirs.role != "primary":
                return _FAST_S  # not promoted yet: following it now would make a cycle
            if local.role == "primary" or local.upstream != leader.addr:
                self.in_loop(lambda: roles.repoint(node, leader.addr))
                self.log.warning("following_leader", leader=leader.id, addr=leader.addr)
                return 0.0  # publish the new role at once (a switchover may be waiting on it)
            return self.interval_s
        return self._elect(scope, local)

    def rebind(self, scope: Scope) -> bool:
        """The leader key names us under another lease (our previous process): take it."""
        k = self.keys
        record = LeaderRecord(self.id, self.address, wall_us() // 1000)
        ok = self.kv.txn(
            [self.kv.unchanged(k.leader, scope.leader_revision)],
            [self.kv.put_op(k.leader, record.dumps(), self.lease)],
        )
        if ok:
            self.log.warning("leader_key_rebound", lease=self.lease)
        return ok

    def _lead(self, scope: Scope, local: NodeStatus) -> float:
        node = self.node
        assert node is not None
        node.lease_writes(self.lease_alive_until - self.margin_ms)
        self._leaderless_since = 0
        if local.role != "primary":
            try:
                self.in_loop(lambda: roles.promote(node, True))
            except WireError as exc:
                self.log.error("promote_failed", error=str(exc))
                self.kv.txn(  # let another member take it
                    [self.kv.unchanged(self.keys.leader, scope.leader_revision)],
                    [self.kv.delete_op(self.keys.leader)],
                )
                return self.interval_s
            self.log.warning("promoted_by_etcd", lsn=local.durable_lsn)
            return 0.0  # publish the new role at once
        self._publish(local, scope.leader)
        optime = OpTime(
            self.id, self.address, local.durable_lsn, len(local.history), local.history_id
        )
        if optime != self._optime:
            self.kv.put(self.keys.optime, optime.dumps())
            self._optime = optime
        return self._switchover(scope, local)

    def _switchover(self, scope: Scope, local: NodeStatus) -> float:
        if self.handover is None and scope.switchover and "error" not in scope.switchover:
            self.handover = Handover.begin(self, scope)
        if self.handover is None:
            return self.interval_s
        if self.handover.step(scope):
            self.handover = None
            return 0.0
        return _FAST_S

    def _elect(self, scope: Scope, local: NodeStatus) -> float:
        if not self._leaderless_since:
            self._leaderless_since = scope.revision
            self.log.warning("leader_gone", revision=scope.revision)
        if self._publish(local, None):
            return 0.0  # read again with our fresh record
        stale = not_yet_fresh(scope, self.id)
        if stale:
            self._say(f"waiting for fresh records from {', '.join(stale)}")
            return _FAST_S
        best, why_not = choose_leader(scope, self.max_lag)
        if best != self.id:
            self._say(
                f"{best} should lead"
                if best
                else "no member can lead: "
                + "; ".join(f"{m}: {why}" for m, why in sorted(why_not.items()))
            )
            return _FAST_S if best else self.interval_s
        k = self.keys
        compare = [self.kv.absent(k.leader)]
        compare += [self.kv.unchanged(k.member(m), r) for m, r in scope.member_revisions.items()]
        if scope.optime is not None:
            compare.append(self.kv.unchanged(k.optime, scope.optime_revision))
        record = LeaderRecord(self.id, self.address, wall_us() // 1000)
        previous = scope.optime.id if scope.optime else ""
        change = Failover("failover", self.id, previous, record.since_ms, local.durable_lsn)
        took = self.kv.txn(
            compare,
            [
                self.kv.put_op(k.leader, record.dumps(), self.lease),
                self.kv.put_op(k.last_failover, change.dumps()),
            ],
        )
        if took:
            self.log.warning("took_leader_key", lsn=local.durable_lsn, previous=previous)
        return 0.0

    def _say(self, verdict: str) -> None:
        self._note(f"no leader; {verdict}")
        if verdict != self._said:
            self._said = verdict
            self.log.info("election", verdict=verdict)

    # ---- publishing --------------------------------------------------------------------------

    def _publish(self, local: NodeStatus, leader: LeaderRecord | None) -> bool:
        """Write our record if it changed (its position: at most once a turn); True if so."""
        promotable = local.role == "primary" or (
            bool(local.history) and local.status in ("ready", "syncing", "connecting")
        )
        status = "fenced" if local.role == "primary" and local.fenced else local.status
        record = MemberRecord(
            id=self.id,
            addr=self.address,
            role=local.role,
            status=status,
            leader=leader.id if leader else "",
            leader_addr=leader.addr if leader else "",
            history=local.history_id,
            timeline=len(local.history),
            lsn=local.durable_lsn,
            applied_lsn=local.applied_lsn,
            promotable=promotable,
            lease=self.lease,
            etcd_ok=self.etcd_ok,
            bootstraps=local.bootstraps,
            updated_ms=wall_us() // 1000,
        )
        old = self._published
        if record.same_position(old):
            return False
        moved_only = old is not None and _same_but_position(record, old)
        if moved_only and time.monotonic() - self._published_at < self.interval_s:
            return False
        self.kv.put(self.keys.member(self.id), record.dumps(), self.lease)
        self._published, self._published_at = record, time.monotonic()
        return True


def _same_but_position(a: MemberRecord, b: MemberRecord) -> bool:
    return (a.role, a.status, a.leader, a.history, a.promotable, a.lease) == (
        b.role,
        b.status,
        b.leader,
        b.history,
        b.promotable,
        b.lease,
    )
