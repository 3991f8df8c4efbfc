"""The operator of the failover simulation: promotes, repoints, restarts, hands over.

It does what ``kevo-repl promote / repoint / switchover`` and a person (or the etcd agent to
come) do, with the same rules: promote the most advanced replica (the node refuses while a
peer other than the lost primary is ahead), repoint the old primary's followers to it,
bring the old primary back as its replica. ``wants`` is the intended topology: a node that
restarts follows what it wants, as its command line would say.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_node import SimNode


class _Acked(Protocol):
    @property
    def lsn(self) -> int: ...
    @property
    def history(self) -> bytes: ...
    @property
    def wait(self) -> int: ...


class World(Protocol):
    """What the operator sees of the failover world (``sim_failover.FailoverSim``)."""

    rng: random.Random
    sched: Scheduler
    nodes: dict[str, SimNode]
    broken: str | None

    @property
    def primary(self) -> SimNode | None: ...
    @property
    def acked(self) -> Sequence[_Acked]: ...


__all__ = ["Operator"]

_AROUND = ("none", "promoted_crash", "old_back_early", "repoint_twice")


class Operator:
    def __init__(self, sim: World) -> None:
        self.sim, self.rng, self.sched = sim, sim.rng, sim.sched
        self.nodes = sim.nodes
        self.wants: dict[str, str] = {}
        self.busy: set[str] = set()
        self.old: SimNode | None = None
        self.failovers_left = 0
        self.around = "none"
        self.attempts = 0
        self.counts = {
            "promotions": 0,
            "promote_retries": 0,
            "repoints": 0,
            "mid_promotion_crashes": 0,
            "old_back_early": 0,
            "repointed_twice": 0,
            "switchover_ms": 0,
            "switchover_cancelled": 0,
            "second_loss_skipped": 0,
            "failovers_abandoned": 0,
        }

    def busy_nodes(self) -> set[str]:
        return self.busy

    def upstream_for(self, node: SimNode, previous: str) -> str:
        self.wants.setdefault(node.name, previous)
        return self.wants[node.name]

    def begin(self, operation: str) -> None:
        for n in self.nodes.values():
            self.wants.setdefault(n.name, n.upstream)
        if operation == "switchover":
            self._switchover()
        else:
            self.failovers_left = 2 if operation == "double" else 1
            self._lose_primary()

    def finish(self) -> None:
        """Healing: every node that is down and not the operator's to restart comes back."""
        for n in self.nodes.values():
            if not n.up and n.name not in self.busy:
                n.start(self.wants.get(n.name, ""))

    # ---- unplanned: the primary is lost ----------------------------------------------------

    def _lose_primary(self, since: int = -1) -> None:
        """Lose the primary; a second loss waits until every write acknowledged with
        ``wait_replicas=1`` is durable on every replica (wait_replicas=1 survives one loss,
        not two in a row), or is skipped after 3 s."""
        p = self.sim.primary
        since = self.sched.now if since < 0 else since
        if p is None or (self.old is not None and not self._spread(p)):
            if self.sched.now - since > 3000:
                self.counts["second_loss_skipped"] += 1
                self.failovers_left = 0
                return
            self.sched.after(100, self._lose_primary, since)
            return
        self.old, self.attempts = p, 0
        self.busy = {p.name}
        self.failovers_left -= 1
        self.around = self.rng.choice(_AROUND)
        p.crash()
        self.sched.note("operator", "primary_lost", lost=p.name, around=self.around)
        detect = self.rng.randint(300, 900)
        if self.around == "old_back_early":
            self.sched.after(self.rng.randint(50, detect + 100), self._old_back_early, p)
        self.sched.after(detect, self._promote_step)

    def _spread(self, p: SimNode) -> bool:
        line = p.disk.chain
        acked = [w.lsn for w in self.sim.acked if w.wait and line.at(w.lsn) == w.history]
        want = max(acked, default=0)
        return all(
            n.follower is not None and n.follower.reported_durable_lsn >= want
            for n in self.nodes.values()
            if n is not p
        )

    def _old_back_early(self, old: SimNode) -> None:
        """The old primary restarts as a replica while the promotion is still to come."""
        best = self._best([n for n in self._candidates(old)])
        if old.up or best is None:
            return
        self.counts["old_back_early"] += 1
        self.wants[old.name] = best.name
        self.busy.discard(old.name)
        old.start(best.name)

    def _candidates(self, old: SimNode) -> list[SimNode]:
        """Replicas on the lost primary's line (a node with a diverged tail is not one)."""
        line = old.disk.chain

        def on_line(n: SimNode) -> bool:  # (a chain extended past it with no data is)
            shared = n.disk.chain.shared_lsn(line)
            return n.lsn == 0 or (shared is not None and shared >= n.lsn)

        return [
            n for n in self.nodes.values() if n is not old and n.role == "replica" and on_line(n)
        ]

    def _best(self, nodes: list[SimNode]) -> SimNode | None:
        ok = [n for n in nodes if n.follower is not None and n.follower.consistent and n.disk.chain]
        if not ok:
            return None
        pick = min if self.sim.broken == "promote_behind" else max
        return pick(ok, key=lambda n: (n.lsn, n.name))

    def _promote_step(self) -> None:
        old = self.old
        assert old is not None
        self.attempts += 1
        for n in self.nodes.values():  # the operator brings every other node up first
            if not n.up and n is not old and n.name not in self.busy:
                n.start(self.wants.get(n.name, ""))
        cands = self._candidates(old)
        target = self._best(cands)
        # the promote command's check: a promotable peer ahead refuses (one still replaying
        # after a rewind counted for no waiting write, so promoting past it loses none)
        ahead = [n for n in cands if target is not None and n.consistent() and n.lsn > target.lsn]
        if target is None or (ahead and self.sim.broken != "promote_behind"):
            if target is None and self.attempts > 30 and not old.up:
                self._abandon(old)  # no replica ever followed: wait for the primary instead
                return
            self.counts["promote_retries"] += 1
            self.sched.after(100, self._promote_step)
            return
        crash = self.around == "promoted_crash" and self.attempts == 1
        why = target.promote(crash_mid_way=crash)
        if why:
            self.counts["promote_retries"] += 1
            if crash:
                self.counts["mid_promotion_crashes"] += 1
                self.busy.add(target.name)
                self.sched.after(self.rng.randint(50, 300), self._restart, target)
            self.sched.after(400, self._promote_step)
            return
        self.counts["promotions"] += 1
        self._after_promotion(old, target)

    def _abandon(self, old: SimNode) -> None:
        """Nothing promotable for 3 s: the lost primary is brought back as the primary."""
        self.counts["failovers_abandoned"] += 1
        self.old, self.wants[old.name] = None, ""
        self.busy.discard(old.name)
        old.start("")
        if self.failovers_left:
            self.sched.after(self.rng.randint(1200, 2000), self._lose_primary)

    def _restart(self, n: SimNode) -> None:
        self.busy.discard(n.name)
        if not n.up:
            n.start(self.wants.get(n.name, ""))

    def _after_promotion(self, old: SimNode, target: SimNode) -> None:
        self.wants[target.name] = ""
        movers = [n for n in self.nodes.values() if self.wants.get(n.name) == old.name]
        for n in movers:
            self.wants[n.name] = target.name
            if n.up and n is not target:
                self._repoint(n, target.name)
        if self.around == "repoint_twice":
            self._repoint_twice(old, target)
        if not old.up and self.wants.get(old.name) != target.name:
            self.wants[old.name] = target.name
            self.sched.after(self.rng.randint(100, 1500), self._restart, old)
        if self.failovers_left:
            self.sched.after(self.rng.randint(1200, 2000), self._lose_primary)

    def _repoint(self, n: SimNode, upstream: str) -> None:
        self.counts["repoints"] += 1
        n.repoint(upstream)

    def _repoint_twice(self, old: SimNode, target: SimNode) -> None:
        others = [n for n in self.nodes.values() if n not in (old, target) and n.up]
        if not others:
            return
        f = self.rng.choice(others)
        if f.upstream != target.name:
            self._repoint(f, target.name)
        # then under another follower of the target (cascading), or back to the target
        relays = [
            g
            for g in others
            if g is not f and self.wants.get(g.name) == target.name and g.upstream == target.name
        ]
        second = self.rng.choice(relays).name if relays else target.name
        self.wants[f.name] = second
        self.counts["repointed_twice"] += 1
        self.sched.after(self.rng.randint(5, 200), self._repoint_again, f, second)

    def _repoint_again(self, f: SimNode, upstream: str) -> None:
        if f.up and self.wants.get(f.name) == upstream:
            self._repoint(f, upstream)

    # ---- planned: switchover ---------------------------------------------------------------

    def _switchover(self) -> None:
        p = self.sim.primary
        ready = [
            n
            for n in self.nodes.values()
            if n.role == "replica" and n.follower is not None and n.follower.consistent
        ]
        if p is None or not ready:
            self.sched.after(100, self._switchover)
            return
        target = self.rng.choice(ready)
        self.busy = {p.name, target.name}
        last = p.handover()
        self.sched.note("operator", "handover", primary=p.name, to=target.name, last=last)
        self._await_target(p, target, last, self.sched.now)

    def _await_target(self, p: SimNode, target: SimNode, last: int, began: int) -> None:
        caught_up = target.lsn >= last and target.disk.chain.current == p.disk.chain.current
        go = caught_up or self.sim.broken == "no_handover_wait"
        if go and target.promote() == "":
            self.counts["promotions"] += 1
            self.counts["switchover_ms"] = self.sched.now - began
            self.wants[p.name] = target.name
            self._repoint(p, target.name)
            self._after_promotion(p, target)
            self.busy = set()
            return
        if self.sched.now - began > 3000:
            p.serving.fenced = ""  # cancelled: the primary takes writes again
            self.counts["switchover_cancelled"] += 1
            self.busy = set()
            return
        self.sched.after(5, self._await_target, p, target, last, began)
