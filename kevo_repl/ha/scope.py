"""A scope's keys in etcd, read into one ``Scope`` and changed only by transactions.

Layout under ``/kevo/<scope>/`` (``docs/failover.md``):

* ``leader``: the leader's id and address, bound to its lease (gone when it stops renewing);
* ``members/<id>``: each member's role and position, bound to that member's lease;
* ``optime``: the leader's last position (no lease: members compare their lag with it);
* ``initialize``: who started the group's first history;
* ``switchover``: a planned handover asked for by ``kevo-repl switchover``;
* ``last_failover``: the last change of leader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kevo_repl.adapters.etcd_kv import EtcdKV
from kevo_repl.core.election import Failover, LeaderRecord, MemberRecord, OpTime, Scope

__all__ = ["ScopeKeys", "read_scope"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    name: str

    @property
    def prefix(self) -> str:
        return f"/kevo/{self.name}/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def members(self) -> str:
        return self.prefix + "members/"

    def member(self, member_id: str) -> str:
        return self.members + member_id

    @property
    def optime(self) -> str:
        return self.prefix + "optime"

    @property
    def initialize(self) -> str:
        return self.prefix + "initialize"

    @property
    def switchover(self) -> str:
        return self.prefix + "switchover"

    @property
    def last_failover(self) -> str:
        return self.prefix + "last_failover"


def read_scope(kv: EtcdKV, keys: ScopeKeys) -> Scope:
    """One consistent read of every key of the scope (a record that cannot be read is
    skipped: a member must not stop electing because another wrote garbage)."""
    revision, found = kv.get_prefix(keys.prefix)
    members: dict[str, MemberRecord] = {}
    member_revisions: dict[str, int] = {}
    for key, entry in found.items():
        if key.startswith(keys.members):
            try:
                record = MemberRecord.loads(entry.value)
            except ValueError:
                continue
            members[record.id] = record
            member_revisions[record.id] = entry.mod_revision
    leader = found.get(keys.leader)
    optime = found.get(keys.optime)
    switch = found.get(keys.switchover)
    last = found.get(keys.last_failover)
    return Scope(
        revision=revision,
        leader=_maybe(LeaderRecord.loads, leader.value) if leader else None,
        leader_lease=leader.lease if leader else 0,
        leader_revision=leader.mod_revision if leader else 0,
        members=members,
        member_revisions=member_revisions,
        optime=_maybe(OpTime.loads, optime.value) if optime else None,
        optime_revision=optime.mod_revision if optime else 0,
        initialized=keys.initialize in found,
        switchover=_maybe(json.loads, switch.value) if switch else None,
        switchover_revision=switch.mod_revision if switch else 0,
        last_failover=_maybe(Failover.loads, last.value) if last else None,
    )


def _maybe(load: Callable[[str], T], text: str) -> T | None:
    try:
        return load(text)
    except ValueError:
        return None
