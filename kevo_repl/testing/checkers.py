"""Invariant checkers: DESIGN.md section 5 turned into assertions over a simulated run.

``Truth`` is the oracle: every batch each primary history ever committed and the primary's
state after it. The checkers compare replicas against it on every apply, install and
follower step, so a violation is caught at the step that causes it, not at the end.
A failed check raises ``Violation`` naming the invariant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import TRANSITIONS, Status
from kevo_repl.testing.messages import Batch
from kevo_repl.testing.sim_node_disk import NodeDisk

__all__ = ["INVARIANTS", "Checker", "HistoryLog", "SimResult", "Truth", "Violation", "digest"]

INVARIANTS = {
    "prefix": "inv1 prefix consistency: a replica's state equals the primary's at its applied LSN",
    "apply": "inv2 no batch applied twice, partly, out of order or from another history",
    "durability": "inv3 acknowledged (synced) writes survive a primary crash",
    "convergence": "inv4 every replica converges to the primary after faults heal",
    "bootstrap": "inv4 bootstrap only when the WAL does not cover a replica, once after healing",
    "retention": "inv4 retention keeps what a known replica needs to resume after a restart",
    "follower": "follower raises no InvariantError and moves only along TRANSITIONS",
    "agreement": "the follower's applied LSN, history and reported durable LSN match its store",
    "wait": "a replicated write's replica count is honest",
    "unrelated": "a replica holding data never bootstraps it away for an unrelated primary "
    "unless told to (--reinit)",
    "split": "at most one writable primary at a time",
    "lost": "no write acknowledged with wait_replicas >= 1 (nor, in a switchover, any) is lost",
    "reported": "every committed write that left the final history is in a discarded-tail report",
}


class Violation(Exception):
    """An invariant failed; ``invariant`` is a key of ``INVARIANTS``."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def _short(history_id: bytes) -> str:
    return history_id.hex()[:8]


def digest(state: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(
            len(key).to_bytes(4, "big") + key + len(state[key]).to_bytes(4, "big") + state[key]
        )
    return h.hexdigest()[:16]


@dataclass(slots=True)
class SimResult:
    """One seed's outcome in either world: ``kind`` is its fault profile (single-primary) or
    its operation (failover); a failure reports the invariant and the command replaying it."""

    seed: int
    failover: bool
    kind: str
    broken: str | None
    violation: Violation | None
    trace: list[str]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def replay(self) -> str:
        world = " --failover" if self.failover else ""
        broken = f" --broken {self.broken}" if self.broken else ""
        return f"python -m kevo_repl.testing.sim{world} --seed {self.seed}{broken}"

    def report(self) -> str:
        """One line naming the invariant and the replay command, then the trace tail."""
        label = "op" if self.failover else "profile"
        v = self.violation
        if v is None:
            return f"ok seed={self.seed} {label}={self.kind} {self.stats}"
        head = (
            f"FAIL seed={self.seed} {label}={self.kind} "
            f"[{INVARIANTS.get(v.invariant, v.invariant)}] {v.detail} | replay: {self.replay}"
        )
        return "\n".join([head, *("    " + line for line in self.trace)])


@dataclass(slots=True)
class HistoryLog:
    """One history's committed batches and the primary's state after each."""

    history_id: bytes
    last_lsn: int = 0
    batches: dict[int, Batch] = field(default_factory=dict)  # by first LSN
    states: dict[int, dict[bytes, bytes]] = field(default_factory=lambda: {0: {}})  # by last LSN

    def commit(self, batch: Batch, state_after: dict[bytes, bytes]) -> None:
        if batch.first_lsn != self.last_lsn + 1 or batch.history_id != self.history_id:
            raise Violation(
                "durability", f"committed {batch.first_lsn}..{batch.last_lsn} after {self.last_lsn}"
            )
        self.batches[batch.first_lsn] = batch
        self.states[batch.last_lsn] = dict(state_after)
        self.last_lsn = batch.last_lsn


@dataclass(slots=True)
class Truth:
    """Every history's log: what "the primary's state at LSN n" means."""

    logs: dict[bytes, HistoryLog] = field(default_factory=dict)

    def log(self, history_id: bytes) -> HistoryLog:
        if history_id not in self.logs:
            self.logs[history_id] = HistoryLog(history_id)
        return self.logs[history_id]

    def state_at(self, history_id: bytes, lsn: int) -> dict[bytes, bytes] | None:
        log = self.logs.get(history_id)
        return None if log is None else log.states.get(lsn)


class Checker:
    """Stateless checks over the truth; the simulator calls them at each step."""

    def __init__(self, truth: Truth) -> None:
        self.truth = truth

    # ---- invariant 2: the apply path --------------------------------------------------------

    def check_apply(self, name: str, store: NodeDisk, batch: Batch) -> None:
        """Called before the store applies a decoded record."""
        first, last, history, entries = (
            batch.first_lsn,
            batch.last_lsn,
            batch.history_id,
            batch.entries,
        )
        if store.applied_lsn and history != store.history_id:
            raise Violation(
                "apply",
                f"{name} at {store.applied_lsn} of {_short(store.history_id)} "
                f"applies {first}..{last} of {_short(history)}",
            )
        if first != store.applied_lsn + 1:
            what = (
                "again"
                if last <= store.applied_lsn
                else "partly"
                if first <= store.applied_lsn
                else "past a gap"
            )
            raise Violation(
                "apply", f"{name} at {store.applied_lsn} applies {first}..{last} {what}"
            )
        log = self.truth.logs.get(history)
        known = None if log is None else log.batches.get(first)
        if known is None or known.last_lsn != last or known.entries != entries:
            raise Violation(
                "apply",
                f"{name} applies {first}..{last} that history {history.hex()[:8]} never committed",
            )

    # ---- invariant 1: prefix consistency ------------------------------------------------------

    def check_state(self, name: str, store: NodeDisk) -> None:
        if store.applied_lsn == 0 and not store.state:
            return
        expected = self.truth.state_at(store.history_id, store.applied_lsn)
        if expected is None:
            raise Violation(
                "prefix", f"{name} is at {store.applied_lsn}, not a committed batch boundary"
            )
        if expected != store.state:
            raise Violation(
                "prefix",
                f"{name} state at {store.applied_lsn} is {digest(store.state)}, "
                f"primary had {digest(expected)}",
            )

    # ---- follower ---------------------------------------------------------------------------

    def check_events(self, name: str, events: Iterable[tuple[str, dict[str, object]]]) -> None:
        for event, fields in events:
            if event == "status":
                pair = (Status[str(fields["old"])], Status[str(fields["new"])])
                if pair not in TRANSITIONS:
                    raise Violation("follower", f"{name} moved {pair[0].name} -> {pair[1].name}")

    def check_agreement(self, name: str, follower: Follower, store: NodeDisk) -> None:
        """The follower's position is the store's, and the durable LSN it reports (which the
        primary's retention follows) is really durable: in its WAL, of its history."""
        synced = store.synced_lsn if store.history_id in (b"", follower.history_id) else 0
        if follower.durable_lsn > synced:
            raise Violation(
                "agreement",
                f"{name} reports durable {follower.durable_lsn}, its store synced {synced} "
                f"(applied {store.applied_lsn})",
            )
        if follower.applied_lsn != store.applied_lsn:
            raise Violation(
                "agreement",
                f"{name} follower at {follower.applied_lsn}, store at {store.applied_lsn}",
            )
        if store.applied_lsn and follower.history_id != store.history_id:
            raise Violation(
                "agreement",
                f"{name} follower history {_short(follower.history_id)}, "
                f"store {_short(store.history_id)}",
            )

    # ---- invariants 3 and 4 -----------------------------------------------------------------

    def check_recovered(self, disk: NodeDisk) -> None:
        """After a primary restart: nothing committed (acknowledged) is missing."""
        log = self.truth.log(disk.chain.current)
        if disk.applied_lsn < log.last_lsn:
            raise Violation(
                "durability",
                f"primary recovered to {disk.applied_lsn}, {log.last_lsn} was acknowledged",
            )
        if log.states.get(disk.applied_lsn) != disk.state:
            raise Violation(
                "durability", f"primary state after recovery differs at {disk.applied_lsn}"
            )

    def check_converged(
        self,
        name: str,
        follower: Follower | None,
        store: NodeDisk,
        primary: NodeDisk,
    ) -> str:
        """Empty string when converged, else why not (the caller decides when that fails)."""
        if follower is None:
            return f"{name} is down"
        last = primary.applied_lsn
        foreign = store.applied_lsn > 0 and store.history_id != primary.chain.current
        if foreign or store.applied_lsn != last:
            return f"{name} at {store.applied_lsn} ({follower.status.name}), primary at {last}"
        if follower.status != Status.READY:
            return f"{name} caught up but {follower.status.name}"
        if digest(store.state) != digest(primary.state):
            raise Violation("prefix", f"{name} digest differs from the primary's at {last}")
        return ""
