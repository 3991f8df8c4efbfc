"""Seeded simulation of failover: promotion, repoint and rejoin, with faults around them.

Four nodes, each a full node (``sim_node.py``: its own WAL, store and chain) driving the
real ``Follower``, history chains, join table and rewind. ``n0`` starts as the primary; the
others follow it directly or through each other (cascading). Clients write (some with
``wait_replicas=1``) while replicas crash, lose power and are partitioned. Then one
operation, as an operator (or later an agent) runs it:

* ``failover``: the primary loses power; the most advanced replica is promoted (the real
  rule: refused while a peer is ahead), the direct followers of the old primary are
  repointed to it, and the old primary comes back as its replica (rejoin by rewind);
* ``switchover``: hand over (no writes), wait for the target, promote it, repoint the rest;
* ``double``: a failover, then the new primary lost too and a second failover.

Faults around the operation: the promoted node loses power mid-promotion (its chain saved,
its role not changed), the old primary comes back while the promotion runs, a follower is
repointed twice. Then faults stop and every node must converge on the last primary.

Invariants: prefix consistency per history (every consistent node's state is a state of
the history owning its LSN, at every step); at most one writable primary at a time; no
write acknowledged with ``wait_replicas >= 1`` is lost (nor, in a switchover, any write);
every committed write that ended off the final line is in some node's discarded-tail
report; zero bootstraps (every log covers every position here); convergence.

    python -m kevo_repl.testing.sim --failover --seeds 0:500 [--broken promote_behind]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kevo_repl.core.history import HistoryChain
from kevo_repl.core.registry import WaitResult
from kevo_repl.testing.broken_failover import FAILOVER_RULES, follower_for
from kevo_repl.testing.checkers import Checker, HistoryLog, SimResult, Truth, Violation, digest
from kevo_repl.testing.mesh import Mesh, MeshParams
from kevo_repl.testing.messages import Batch
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_node import NodeHooks, SimNode
from kevo_repl.testing.sim_operator import Operator

__all__ = ["FailoverSim", "run_failover_seed"]

OPERATIONS = ("failover", "switchover", "double")


@dataclass(slots=True)
class _Write:
    lsn: int
    history: bytes
    wait: int


class FailoverSim:
    def __init__(self, seed: int, broken: str | None = None, trace_lines: int = 16) -> None:
        if broken is not None and broken not in FAILOVER_RULES:
            raise ValueError(f"unknown broken rule {broken!r}")
        self.seed, self.broken, self.trace_lines = seed, broken, trace_lines
        self.rng = rng = random.Random(seed)
        self.sched = Scheduler(trace_len=256)
        self.truth = Truth()
        self.checker = Checker(self.truth)
        self.mesh = Mesh(self.sched, rng, MeshParams(drop=rng.choice([0.0, 0.0, 0.005, 0.02])))
        hooks = NodeHooks(self._committed, self._forked, self._waited, self._check_step)
        cls = follower_for(broken)
        self.nodes = {
            n: SimNode(n, self.sched, rng, self.mesh, self.checker, hooks, cls)
            for n in ("n0", "n1", "n2", "n3")
        }
        for node in self.nodes.values():
            node.reuse_history = broken == "reuse_history"
        self.operation = rng.choice(OPERATIONS)
        self.op_at = rng.randint(700, 1600)
        self.heal_at = self.op_at + rng.randint(3500, 5000)
        self.deadline = self.heal_at + 10_000
        self.write_mean_ms = rng.choice([3, 6, 12])
        self.wait_chance = rng.choice([0.2, 0.5])
        self.acked: list[_Write] = []
        self.healed = False
        self.operator = Operator(self)
        self.counts = {"writes": 0, "refused": 0, "acked_wait": 0, "faults": 0}

    @property
    def primary(self) -> SimNode | None:
        """The node the operator sends writes to (the one writable primary, if any)."""
        writable = [n for n in self.nodes.values() if n.role == "primary" and not n.serving.fenced]
        return writable[0] if writable else None

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        sched, rng = self.sched, self.rng
        try:
            self.nodes["n0"].start()
            ups = {"n1": "n0", "n2": rng.choice(["n0", "n1"]), "n3": rng.choice(["n0", "n1", "n2"])}
            for name, up in ups.items():
                sched.at(rng.randint(0, 200), self.nodes[name].start, up)
            sched.after(5, self._write)
            sched.after(rng.randint(100, 400), self._fault)
            sched.at(self.op_at, self.operator.begin, self.operation)
            sched.at(self.heal_at, self._heal)
            sched.run_until(self.deadline + 500)
            if not self.healed or not self._converged(final=True):
                raise Violation("convergence", "the run ended before it converged")
            violation = None
        except Violation as v:
            violation = v
        return SimResult(
            self.seed,
            True,
            self.operation,
            self.broken,
            violation,
            sched.format_trace(self.trace_lines),
            self._stats(),
        )

    def _write(self) -> None:
        if self.healed:
            return
        rng = self.rng
        p = self.primary
        entries = tuple(
            (1, b"k%02d" % rng.randrange(24), b"v%d" % rng.randrange(10**6))
            if rng.random() < 0.85
            else (2, b"k%02d" % rng.randrange(24), b"")
            for _ in range(rng.randint(1, 3))
        )
        wait = 1 if rng.random() < self.wait_chance else 0
        self.counts["writes"] += 1
        if p is None or not p.write(entries, wait, rng.randint(100, 600)):
            self.counts["refused"] += 1
        elif not wait:
            self.acked.append(_Write(p.disk.last_lsn, p.disk.chain.current, 0))
        self.sched.after(max(1, int(rng.expovariate(1 / self.write_mean_ms))), self._write)

    # ---- background faults ------------------------------------------------------------------

    def _fault(self) -> None:
        if self.healed:
            return
        rng = self.rng
        busy = self.operator.busy_nodes()
        candidates = [n for n in self.nodes.values() if n.role == "replica" and n.name not in busy]
        if candidates:
            n = rng.choice(candidates)
            self.counts["faults"] += 1
            if rng.random() < 0.5:
                self.mesh.partition(n.name, rng.randint(100, 1500))
                self.sched.note(n.name, "partitioned")
            else:
                upstream = n.upstream
                n.crash()
                self.sched.after(rng.randint(50, 1200), self._restart, n, n.incarnation, upstream)
        self.sched.after(rng.randint(150, 700), self._fault)

    def _restart(self, n: SimNode, incarnation: int, upstream: str) -> None:
        if not n.up and n.incarnation == incarnation and not self.healed:
            n.start(self.operator.upstream_for(n, upstream))

    def _heal(self) -> None:
        self.healed = True
        self.mesh.heal_all()
        self.operator.finish()
        self.sched.every(100, lambda: not self._converged())

    # ---- the oracle -------------------------------------------------------------------------

    def _committed(self, batch: Batch, state: dict[bytes, bytes]) -> None:
        self.truth.log(batch.history_id).commit(batch, state)

    def _forked(self, chain: HistoryChain) -> None:
        """A promotion: the new history inherits its parent's state at the fork LSN."""
        history, fork = chain.entries[-1]
        base = self.truth.state_at(chain.at(fork), fork) if fork else {}
        if base is None:
            raise Violation("prefix", f"promoted at LSN {fork}, no state of its history there")
        self.truth.logs[history] = HistoryLog(history, fork, states={fork: dict(base)})

    def _waited(self, result: WaitResult, lsn: int, k: int, history: bytes) -> None:
        if not result.timed_out and result.replicas_applied >= k:
            self.acked.append(_Write(lsn, history, k))
            self.counts["acked_wait"] += 1

    def _check_step(self, node: SimNode) -> None:
        """Prefix consistency per history, and one writable primary at most."""
        d = node.disk
        if node.consistent() and d.applied_lsn:
            want = self.truth.state_at(d.history_id, d.applied_lsn)
            if want is None or digest(want) != digest(d.state):
                raise Violation(
                    "prefix",
                    f"{node.name} ({node.role}) at {d.applied_lsn} of {d.history_id.hex()[:8]}: "
                    "its state is no state of that history",
                )
        writable = [
            n.name for n in self.nodes.values() if n.role == "primary" and not n.serving.fenced
        ]
        if len(writable) > 1:
            raise Violation("split", f"two writable primaries: {writable}")

    # ---- the end ----------------------------------------------------------------------------

    def _converged(self, final: bool = False) -> bool:
        p = self.primary
        waiting = []
        if p is None:
            waiting.append("no writable primary")
        else:
            for n in self.nodes.values():
                f = n.follower
                if n is p:
                    continue
                if f is None:
                    waiting.append(f"{n.name} is {n.role}")
                elif (
                    n.disk.chain.current != p.disk.chain.current
                    or n.lsn != p.lsn
                    or f.status.name != "READY"
                    or not f.consistent
                ):
                    waiting.append(f"{n.name} at {n.lsn} {f.status.name}, primary at {p.lsn}")
                elif digest(n.disk.state) != digest(p.disk.state):
                    raise Violation("prefix", f"{n.name} digest differs at {n.lsn}")
        if not waiting and p is not None:
            self._final_checks(p)
            self.sched.stop()
            return True
        if final or self.sched.now >= self.deadline:
            raise Violation("convergence", "; ".join(waiting))
        return False

    def _final_checks(self, p: SimNode) -> None:
        chain = p.disk.chain
        switchover = self.operation == "switchover"
        for w in self.acked:
            if (w.wait or switchover) and chain.at(w.lsn) != w.history:
                raise Violation(
                    "lost",
                    f"write at LSN {w.lsn} of {w.history.hex()[:8]} acknowledged "
                    f"(wait_replicas={w.wait}) is not on the final history {chain.describe()}",
                )
        reports = [r for n in self.nodes.values() for r in n.discarded]
        for h, log in self.truth.logs.items():
            for b in log.batches.values():
                if chain.at(b.last_lsn) == h:
                    continue
                if not any(a < b.first_lsn and b.last_lsn <= to for a, to, _ in reports):
                    raise Violation(
                        "reported",
                        f"committed {b.first_lsn}..{b.last_lsn} of {h.hex()[:8]} left the "
                        "final history and no node reported discarding it",
                    )
        boots = {
            n.name: n.needless_bootstraps for n in self.nodes.values() if n.needless_bootstraps
        }
        if boots:
            raise Violation("bootstrap", f"bootstraps though the logs covered: {boots}")
        if switchover and any(n.bootstraps for n in self.nodes.values()):
            raise Violation("bootstrap", "a switchover bootstrapped a node")
        if switchover and reports:
            raise Violation("lost", f"a switchover discarded tails: {reports[0][:2]}")

    def _stats(self) -> dict[str, int]:
        nodes = self.nodes.values()
        return {
            **self.counts,
            **self.operator.counts,
            "acked": len(self.acked),
            "histories": len(self.truth.logs),
            "discarded_tails": sum(len(n.discarded) for n in nodes),
            "rewinds_served": sum(n.serving.served["rewinds"] for n in nodes),
            "bootstraps": sum(n.bootstraps for n in nodes),
            "bootstraps_uncovered": sum(n.bootstraps - n.needless_bootstraps for n in nodes),
            "end_ms": self.sched.now,
        }


def run_failover_seed(seed: int, broken: str | None = None, trace_lines: int = 16) -> SimResult:
    return FailoverSim(seed, broken, trace_lines).run()
