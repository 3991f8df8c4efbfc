"""A planned switchover through etcd, carried out by the leader's agent.

``kevo-repl switchover --etcd`` writes ``switchover`` = ``{"id", "to", "timeout_s"}``. The
leader's agent then:

1. picks the target (the one asked for, or the most advanced other member) and refuses a
   target that is unknown, itself or not promotable, writing ``"error"`` into the request;
2. hands its node over (no more writes; it says its last LSN, ``node/roles.py``);
3. waits, turn by turn (renewing its lease meanwhile), until the target's durable LSN as
   its node's registry sees it reaches that LSN;
4. moves the leader key to the target in one transaction, bound to the *target's* lease:
   the target's agent promotes its node on the watch event, and ours repoints to it. The
   new history forks exactly at the last LSN, so nothing is lost and nothing bootstraps.

A target that does not catch up in time cancels the handover: the leader takes writes
again and the request gets its error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kevo_repl.adapters.clock import wall_us
from kevo_repl.core.election import Failover, LeaderRecord, MemberRecord, Scope, choose_leader
from kevo_repl.node import roles

if TYPE_CHECKING:
    from kevo_repl.ha.agent import Agent

__all__ = ["Handover"]


@dataclass(slots=True)
class Handover:
    agent: Agent
    request: dict[str, Any]
    target: MemberRecord
    last_lsn: int
    deadline: float
    started: float

    @classmethod
    def begin(cls, agent: Agent, scope: Scope) -> Handover | None:
        request = dict(scope.switchover or {})
        target, error = _target(agent.id, scope, str(request.get("to", "")))
        if target is None:
            agent.kv.put(agent.keys.switchover, json.dumps({**request, "error": error}))
            agent.log.error("switchover_refused", error=error)
            return None
        node = agent.node
        assert node is not None
        reply = agent.in_loop(lambda: roles.handover(node, target.addr))
        timeout = float(request.get("timeout_s", 30))
        now = time.monotonic()
        agent.log.warning("switchover_started", to=target.id, last_lsn=reply.last_lsn)
        return cls(agent, request, target, reply.last_lsn, now + timeout, now)

    def step(self, scope: Scope) -> bool:
        """One turn of waiting; True once the handover is over (moved or cancelled)."""
        agent = self.agent
        node = agent.node
        assert node is not None
        if not scope.switchover or scope.switchover.get("id") != self.request.get("id"):
            return self._cancel("the switchover request was withdrawn")
        target_id = self.target.id
        durable = agent.in_loop(
            lambda: max(
                (r.durable_lsn for r in node.followers.replicas() if r.replica_id == target_id),
                default=-1,
            )
        )
        if durable < self.last_lsn:
            if time.monotonic() > self.deadline:
                return self._cancel(
                    f"{target_id} did not reach LSN {self.last_lsn} in time (at {durable})"
                )
            return False
        k = agent.keys
        record = LeaderRecord(target_id, self.target.addr, wall_us() // 1000)
        change = Failover("switchover", target_id, agent.id, record.since_ms, self.last_lsn)
        try:
            moved = agent.kv.txn(
                [
                    agent.kv.unchanged(k.leader, scope.leader_revision),
                    agent.kv.unchanged(k.switchover, scope.switchover_revision),
                ],
                [
                    agent.kv.put_op(k.leader, record.dumps(), self.target.lease),
                    agent.kv.put_op(k.last_failover, change.dumps()),
                    agent.kv.delete_op(k.switchover),
                ],
            )
        except LookupError:
            return self._cancel(f"{target_id}'s lease has expired")
        if not moved:
            return self._cancel("the scope changed under the switchover")
        took = time.monotonic() - self.started
        agent.log.warning("switchover_moved_key", to=target_id, lsn=self.last_lsn, took_s=took)
        return True

    def _cancel(self, why: str) -> bool:
        agent = self.agent
        node = agent.node
        assert node is not None
        agent.in_loop(lambda: roles.handover(node, "", cancel=True))
        agent.log.error("switchover_cancelled", error=why)
        if agent.kv.get_prefix(agent.keys.switchover)[1]:
            agent.kv.put(agent.keys.switchover, json.dumps({**self.request, "error": why}))
        return True


def _target(me: str, scope: Scope, wanted: str) -> tuple[MemberRecord | None, str]:
    others = {m: r for m, r in scope.members.items() if m != me}
    if wanted:
        if wanted == me:
            return None, f"{me} is the leader already"
        target = others.get(wanted)
        if target is None:
            return None, f"no live member {wanted!r} (members: {', '.join(sorted(others))})"
        if not target.promotable or target.role != "replica":
            return None, f"{wanted} cannot be promoted now (status {target.status})"
        return target, ""
    best, why_not = choose_leader(replace(scope, members=others, optime=None), 1 << 62)
    if best is None:
        reasons = "; ".join(f"{m}: {w}" for m, w in sorted(why_not.items())) or "no other member"
        return None, f"no member can take over: {reasons}"
    return others[best], ""
