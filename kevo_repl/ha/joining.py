"""How a member starts: what its node should be before the node exists.

* a leader exists: follow it;
* the leader key names this member (its previous process led): keep it, bound to the new
  lease, if this directory started its current history; otherwise the key was moved to us
  by a switchover before we promoted, so give it up and let the election decide;
* a new scope: take ``initialize`` and the leader key in one transaction, start the first
  history;
* no leader: follow the last leader (``optime``), or any other member; only a directory
  that started its current history and was the last leader starts as a primary then, one
  that accepts no writes until elected. With nobody to follow, wait.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import wall_us
from kevo_repl.adapters.etcd_kv import EtcdUnavailable
from kevo_repl.adapters.history_file import load_chain, load_own_history
from kevo_repl.core.election import Failover, LeaderRecord
from kevo_repl.ha.scope import read_scope

if TYPE_CHECKING:
    from kevo_repl.ha.agent import Agent

__all__ = ["join_scope"]


def join_scope(agent: Agent, data_dir: Path, wait_s: float) -> tuple[str, bool]:
    """Its node's upstream ("" = primary) and whether it holds the key; retried while
    etcd does not answer (for ``wait_s``) or there is nobody to follow."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            found = _join_once(agent, _owns_history(data_dir))
        except EtcdUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            agent.log.warning("etcd_unreachable", etcd=agent.kv.where, error=str(exc))
            time.sleep(1.0)
            continue
        if found is not None:
            return found
        if not said:
            agent.log.warning("waiting_for_a_member_to_follow", scope=agent.keys.name)
            said = True
        time.sleep(0.5)


def _join_once(agent: Agent, owns: bool) -> tuple[str, bool] | None:
    if not agent.lease:
        agent.renew()
    k = agent.keys
    while True:
        scope = read_scope(agent.kv, k)
        leader = scope.leader
        if leader is not None and leader.id != agent.id:
            return leader.addr, False
        if leader is not None:  # our previous process's key
            if owns and agent.rebind(scope):
                return "", True
            if not owns:  # moved to us (a switchover) before we promoted: elect anew
                agent.kv.txn(
                    [agent.kv.unchanged(k.leader, scope.leader_revision)],
                    [agent.kv.delete_op(k.leader)],
                )
            continue
        if not scope.initialized:
            record = LeaderRecord(agent.id, agent.address, wall_us() // 1000)
            first = Failover("initialize", agent.id, at_ms=record.since_ms)
            took = agent.kv.txn(
                [agent.kv.absent(k.initialize), agent.kv.absent(k.leader)],
                [
                    agent.kv.put_op(k.initialize, record.dumps()),
                    agent.kv.put_op(k.leader, record.dumps(), agent.lease),
                    agent.kv.put_op(k.last_failover, first.dumps()),
                ],
            )
            if took:
                agent.log.warning("initialized_scope", scope=k.name)
                return "", True
            continue
        last = scope.optime
        if last is not None and last.id == agent.id and owns:
            return "", False  # a primary that accepts no writes until elected
        if last is not None and last.id != agent.id:
            return last.addr, False
        others = sorted(m.addr for m in scope.members.values() if m.id != agent.id)
        return (others[0], False) if others else None


def _owns_history(data_dir: Path) -> bool:
    """The directory started its current history (new, promoted, restored as a new one)."""
    chain = load_chain(data_dir)
    return bool(chain) and chain is not None and load_own_history(data_dir) == chain.current
