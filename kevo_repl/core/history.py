"""Histories with fork points: which LSNs belong to which history, and how two nodes relate.

A history is a random 16-byte id. A promotion starts a new one, forked at the promoted
node's last LSN: the new history inherits every entry up to that LSN from its parent (as a
PostgreSQL timeline inherits WAL up to its switchpoint, and Redis keeps ``replid2``). A node
keeps its chain, root first::

    HistoryChain(((H1, 0), (H2, 500), (H3, 800)))

H1 owns LSNs 1..500, H2 501..800, H3 from 801 on. A node's *position* is its chain and its
last LSN. Two positions on chains that share the history owning that LSN, at or below the
point where the chains part, are on the same line of history: the follower continues by
WalSync. A position past that point on another branch has *diverged*: its tail must be
discarded (rewound) first. Chains with no history in common are *unrelated*: a wrong or
wiped primary, never followed by a node holding data unless told to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "HISTORY_ID_BYTES",
    "NEVER_FOLLOWED",
    "HistoryChain",
    "HistoryError",
    "Relation",
    "Verdict",
    "relate",
]

HISTORY_ID_BYTES = 16

# Why a node with an empty chain is not promoted: its new root history would be unrelated to
# every node that holds data, so none of them could follow it without being wiped.
NEVER_FOLLOWED = (
    "this node has never followed a history and holds no data: promoting it would start an "
    "empty database unrelated to every node holding data, which could then not follow it. "
    "Promote a replica that holds data, wait for the primary, or pass --force to start "
    "an empty database"
)


class HistoryError(ValueError):
    """A chain that cannot be: a malformed id, fork points out of order, a repeated id."""


@dataclass(frozen=True, slots=True)
class HistoryChain:
    """``entries``: ``(history_id, fork_lsn)`` root first; the root's fork LSN is 0."""

    entries: tuple[tuple[bytes, int], ...] = ()

    def __post_init__(self) -> None:
        seen: set[bytes] = set()
        last_fork = -1
        for i, (hid, fork) in enumerate(self.entries):
            if len(hid) != HISTORY_ID_BYTES:
                raise HistoryError(f"history id of {len(hid)} bytes, not {HISTORY_ID_BYTES}")
            if hid in seen:
                raise HistoryError(f"history {hid.hex()} appears twice in one chain")
            if (i == 0 and fork != 0) or (i > 0 and fork < last_fork):
                raise HistoryError(f"fork LSN {fork} of {hid.hex()} is out of order")
            seen.add(hid)
            last_fork = fork

    @classmethod
    def root(cls, history_id: bytes) -> HistoryChain:
        return cls(((history_id, 0),))

    @classmethod
    def of(cls, pairs: Iterable[tuple[bytes, int]]) -> HistoryChain:
        return cls(tuple((bytes(h), int(f)) for h, f in pairs))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def current(self) -> bytes:
        """The newest history (b"" for an empty chain: a node that never held data)."""
        return self.entries[-1][0] if self.entries else b""

    @property
    def ids(self) -> tuple[bytes, ...]:
        return tuple(h for h, _ in self.entries)

    def index(self, history_id: bytes) -> int | None:
        for i, (h, _) in enumerate(self.entries):
            if h == history_id:
                return i
        return None

    def end_of(self, history_id: bytes) -> int | None:
        """The last LSN ``history_id`` owns on this chain (None: it is the newest, or absent)."""
        i = self.index(history_id)
        if i is None or i + 1 == len(self.entries):
            return None
        return self.entries[i + 1][1]

    def at(self, lsn: int) -> bytes:
        """The history that owns ``lsn`` on this chain."""
        owner = b""
        for h, fork in self.entries:
            if fork >= lsn and owner:
                break
            owner = h
        return owner

    def extend(self, history_id: bytes, fork_lsn: int) -> HistoryChain:
        """A new history forked at ``fork_lsn`` (a promotion) from the history owning it.

        Histories of this chain forked at or past ``fork_lsn`` are dropped: a node that took
        a newer primary's chain but holds none of its records yet forks from the older one.
        """
        kept = tuple(e for i, e in enumerate(self.entries) if i == 0 or e[1] < fork_lsn)
        return HistoryChain((*kept, (history_id, fork_lsn)))

    def shared_lsn(self, other: HistoryChain) -> int | None:
        """The last LSN both chains assign to the same history: where they part (None if
        they share no history at all). Identical chains share everything (a large number)."""
        if not self.entries or not other.entries or self.entries[0][0] != other.entries[0][0]:
            return None
        n = min(len(self.entries), len(other.entries))
        for i in range(1, n):
            if self.entries[i] != other.entries[i]:
                # both inherited history i-1 up to their own fork point: the lower one
                return min(self.entries[i][1], other.entries[i][1])
        if len(self.entries) == len(other.entries):
            return _EVERYTHING
        longer = self.entries if len(self.entries) > n else other.entries
        return longer[n][1]  # the shorter one is an ancestor: shared up to the next fork

    def descends_from(self, other: HistoryChain) -> bool:
        """True when ``other`` is a proper prefix of this chain (we are newer)."""
        k = len(other.entries)
        return 0 < k < len(self.entries) and self.entries[:k] == other.entries

    def pairs(self) -> list[tuple[bytes, int]]:
        return list(self.entries)

    def describe(self) -> str:
        return " -> ".join(f"{h.hex()}@{f}" for h, f in self.entries) or "(none)"


_EVERYTHING = (1 << 63) - 1


class Verdict(enum.Enum):
    FOLLOW = "follow"  # continue from our position by WalSync (catch up if behind)
    EMPTY = "empty"  # we hold nothing: catch up from LSN 1 or bootstrap
    DIVERGED = "diverged"  # our tail past ``shared_lsn`` is on another branch: rewind it
    UPSTREAM_BEHIND = "upstream_behind"  # same line, the upstream has less than we do
    UPSTREAM_OLDER = "upstream_older"  # the upstream is on a history we have moved past
    UNRELATED = "unrelated"  # no history in common


@dataclass(frozen=True, slots=True)
class Relation:
    verdict: Verdict
    shared_lsn: int  # the last LSN our data has in common with the upstream's line
    reason: str


def relate(ours: HistoryChain, our_lsn: int, theirs: HistoryChain, their_lsn: int) -> Relation:
    """How a follower at ``(ours, our_lsn)`` relates to an upstream at ``(theirs, their_lsn)``."""
    if not ours or our_lsn == 0:
        return Relation(Verdict.EMPTY, 0, "we hold no data")
    if not theirs:
        return Relation(Verdict.UPSTREAM_BEHIND, 0, "the upstream holds no data yet")
    shared = ours.shared_lsn(theirs)
    if ours.descends_from(theirs):  # never back to a history we moved past
        return Relation(
            Verdict.UPSTREAM_OLDER,
            min(our_lsn, shared or 0),
            f"the upstream is on history {theirs.current.hex()}, which we left at LSN {shared} "
            f"for {ours.current.hex()}",
        )
    if shared is None:
        return Relation(
            Verdict.UNRELATED,
            0,
            f"the upstream's history {theirs.current.hex()} is unrelated to ours "
            f"({ours.current.hex()})",
        )
    if our_lsn > shared:
        return Relation(
            Verdict.DIVERGED,
            shared,
            f"our LSNs {shared + 1}..{our_lsn} are on history {ours.at(our_lsn).hex()}, "
            f"which the upstream left at LSN {shared}",
        )
    if our_lsn > their_lsn:
        return Relation(
            Verdict.UPSTREAM_BEHIND,
            our_lsn,
            f"the upstream is at LSN {their_lsn}, behind us ({our_lsn}) on the same history",
        )
    return Relation(Verdict.FOLLOW, our_lsn, "")
