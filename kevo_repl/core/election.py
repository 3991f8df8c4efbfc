"""Who may take the leader key: the records members keep in etcd, and the choice among them.

Pure: the agent (``kevo_repl/ha/agent.py``) reads the scope, and this module decides. The
rules (as Patroni's, with the position made exact by our history chains):

* only a *live* member counts (its record is bound to its lease, so a dead one vanishes);
* only a *fresh* record counts: written after its member saw the leader gone (it names no
  leader), so no member decides on a position that a follower has since passed (a stale
  record is waited for, or expires with its member's lease);
* a member is *eligible* when it can be promoted (a replica whose store is a state of the
  history, or a fenced primary) and is at most ``max_lag`` entries behind the last position
  the leader published;
* the most advanced eligible member wins: the latest history (the longest chain, as a
  PostgreSQL timeline), then the highest durable LSN, then the lowest id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Self

__all__ = [
    "Failover",
    "LeaderRecord",
    "MemberRecord",
    "OpTime",
    "Scope",
    "choose_leader",
    "not_yet_fresh",
]


class _Json:
    """A record kept in etcd as a JSON document of its fields."""

    __slots__ = ()

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def loads(cls, text: str) -> Self:
        try:
            doc = json.loads(text)
            fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
            return cls(**{k: doc[k] for k in fields if k in doc})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable {cls.__name__} in etcd: {text[:120]!r} ({exc})") from None


@dataclass(frozen=True, slots=True)
class MemberRecord(_Json):
    """What a member publishes under ``members/<id>``, bound to its lease."""

    id: str
    addr: str  # HOST:PORT of its node (PUB; ROUTER is +1)
    role: str  # "primary" | "replica" (as its node says)
    status: str  # its node's status: ready, syncing, bootstrapping, fenced, ...
    leader: str = ""  # the leader it sees ("": none)
    leader_addr: str = ""  # and where that leader serves
    history: str = ""  # its current history id, hex
    timeline: int = 0  # how many histories its chain holds
    lsn: int = 0  # durable in its WAL
    applied_lsn: int = 0
    promotable: bool = False
    lease: int = 0
    etcd_ok: bool = True
    bootstraps: int = 0
    updated_ms: int = 0  # wall clock when written (for status only)

    def same_position(self, other: MemberRecord | None) -> bool:
        """Equal but for the time it was written: no need to write it again."""
        return other is not None and asdict(self) | {"updated_ms": 0} == asdict(other) | {
            "updated_ms": 0
        }


@dataclass(frozen=True, slots=True)
class LeaderRecord(_Json):
    """The leader key's value; the key is bound to the leader's lease."""

    id: str
    addr: str
    since_ms: int = 0


@dataclass(frozen=True, slots=True)
class OpTime(_Json):
    """The leader's last published position (no lease: it outlives the leader)."""

    id: str
    addr: str
    lsn: int
    timeline: int
    history: str = ""


@dataclass(frozen=True, slots=True)
class Failover(_Json):
    """The last change of leader, for ``status --etcd``."""

    kind: str  # "failover" | "switchover" | "initialize"
    to: str
    previous: str = ""
    at_ms: int = 0  # wall clock
    lsn: int = 0  # the new leader's position when it took the key


@dataclass(frozen=True, slots=True)
class Scope:
    """One read of a scope: every record and the revisions a transaction compares."""

    revision: int
    leader: LeaderRecord | None = None
    leader_lease: int = 0
    leader_revision: int = 0
    members: dict[str, MemberRecord] = field(default_factory=dict)
    member_revisions: dict[str, int] = field(default_factory=dict)
    optime: OpTime | None = None
    optime_revision: int = 0
    initialized: bool = False
    switchover: dict[str, Any] | None = None
    switchover_revision: int = 0
    last_failover: Failover | None = None


def not_yet_fresh(scope: Scope, me: str) -> list[str]:
    """Members (other than ``me``) whose record still names a leader: written before they
    saw the leader gone, so their position may be behind where they are. Waited for: they
    write a fresh record (naming none) on their next turn, or their lease drops it.

    Not "written after the revision at which I saw the leader gone": a member quicker than
    me may have written its fresh record before my first read without a leader, and would
    then wait for me while I waited for it (seen under load in the failover soak)."""
    return sorted(m.id for m in scope.members.values() if m.id != me and m.leader)


def _rank(m: MemberRecord) -> tuple[int, int, str]:
    return (-m.timeline, -m.lsn, m.id)


def choose_leader(scope: Scope, max_lag: int) -> tuple[str | None, dict[str, str]]:
    """The member that should take the leader key now, and why each other one may not."""
    why_not: dict[str, str] = {}
    eligible: list[MemberRecord] = []
    top = scope.optime
    for m in scope.members.values():
        if not m.promotable:
            why_not[m.id] = f"cannot be promoted now (status {m.status})"
        elif top is not None and m.timeline <= top.timeline and top.lsn - m.lsn > max_lag:
            why_not[m.id] = (
                f"{top.lsn - m.lsn} entries behind the last leader's LSN {top.lsn}, "
                f"over --max-lag-on-failover {max_lag}"
            )
        else:
            eligible.append(m)
    if not eligible:
        return None, why_not
    eligible.sort(key=_rank)
    best = eligible[0]
    for m in eligible[1:]:
        why_not[m.id] = f"less advanced than {best.id} (timeline {best.timeline}, LSN {best.lsn})"
    return best.id, why_not
