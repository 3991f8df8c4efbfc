"""Seeded deterministic simulation of a primary and its replicas (VOPR / FoundationDB style).

One seed is one run: ``random.Random(seed)`` draws a fault profile's parameters and drives
every random choice, and a virtual-time scheduler orders every event, so a seed replays
exactly. The nodes are the failover world's full nodes (``sim_node.py``: a WAL, a store, a
chain and one serving side each): one starts as the primary, the others follow it. A run
has two phases: until ``heal_ms`` clients write while faults (message loss, partitions,
crashes, pauses, storage errors, stalled disks, a wiped primary) are injected; then faults
and writes stop and every replica must converge to the primary before a deadline. The checkers
(``sim_watch.py``) run throughout; the first violation ends the run and prints the command
that replays it. ``--failover`` runs the failover world (``sim_failover.py``) instead::

    python -m kevo_repl.testing.sim --seed 17
    python -m kevo_repl.testing.sim --seeds 0:250 [--broken apply_past_gap]
    python -m kevo_repl.testing.sim --failover --seeds 0:1000 [--broken promote_behind]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from kevo_repl.core.follower import Follower
from kevo_repl.testing.broken import BROKEN_RULES
from kevo_repl.testing.broken_failover import FAILOVER_RULES
from kevo_repl.testing.checkers import Checker, SimResult, Truth, Violation
from kevo_repl.testing.mesh import Mesh
from kevo_repl.testing.messages import Batch, Entry, apply_entries, encode_record
from kevo_repl.testing.profiles import Setup, make_setup
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_failover import run_failover_seed
from kevo_repl.testing.sim_node import SimNode
from kevo_repl.testing.sim_watch import Watch

__all__ = ["SimResult", "Simulation", "main", "run_seed"]

_FAULTS = ("partition", "crash", "pause", "primary_crash", "primary_pause", "reinit")


class Simulation:
    """Builds one seed's world of full nodes, injects its faults, and checks it converges."""

    def __init__(self, seed: int, broken: str | None = None, trace_lines: int = 12) -> None:
        self.seed, self.broken, self.trace_lines = seed, broken, trace_lines
        self.rng = rng = random.Random(seed)
        self.setup: Setup = make_setup(seed, rng)
        self.sched = sched = Scheduler()
        self.truth = Truth()
        self.checker = checker = Checker(self.truth)
        self.mesh = mesh = Mesh(sched, rng, self.setup.net)
        s = self.setup
        self.watch = Watch(sched, self.truth, checker, s.heal_ms, s.deadline_ms)
        hooks = self.watch.hooks()
        self.primary = SimNode("primary", sched, rng, mesh, checker, hooks, params=s.primary)
        follower_cls: type[Follower] = BROKEN_RULES[broken] if broken else Follower
        self.replicas = [
            SimNode(f"r{i}", sched, rng, mesh, checker, hooks, follower_cls, params)
            for i, params in enumerate(s.nodes)
        ]
        for r in self.replicas:
            r.stale_durable = broken == "stale_checkpoint"
        self.watch.primary, self.watch.replicas = self.primary, self.replicas
        self.healed = False
        self.faults = dict.fromkeys(_FAULTS, 0)

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        s, sched = self.setup, self.sched
        try:
            if s.foreign is not None:
                self._seed_foreign(self.replicas[s.foreign])
                self.watch.retention_passed = True
            self.primary.start()
            for i, r in enumerate(self.replicas):
                sched.at(s.start_ms[i], self._start_replica, r)
            sched.after(0, self._write)
            sched.after(self.rng.randint(200, 800), self._fault)
            sched.at(s.heal_ms, self._heal)
            sched.run_until(s.deadline_ms + 1000)
            if not self.watch.converged_at:
                self.watch.check_convergence(final=True)
            violation = None
        except Violation as v:
            violation = v
        return SimResult(
            self.seed,
            False,
            s.profile.name,
            self.broken,
            violation,
            self.sched.format_trace(self.trace_lines),
            self._stats(),
        )

    def _write(self) -> None:
        if self.sched.now >= self.setup.heal_ms:
            return
        s, rng = self.setup, self.rng
        wait = rng.randint(1, s.replicas) if rng.random() < s.wait_chance else 0
        self.primary.write(self._entries(), wait, rng.randint(100, 800))
        self.sched.after(max(1, int(rng.expovariate(1 / s.write_mean_ms))), self._write)

    def _entries(self) -> tuple[Entry, ...]:
        rng, keys = self.rng, self.setup.keyspace
        return tuple(
            (1, b"k%03d" % rng.randrange(keys), b"v%d" % rng.randrange(10**6))
            if rng.random() < 0.85
            else (2, b"k%03d" % rng.randrange(keys), b"")
            for _ in range(rng.randint(1, 4))
        )

    def _start_replica(self, r: SimNode) -> None:
        if r.incarnation == 0:  # a late joiner may have been started by the heal already
            r.start(self.primary.name)

    def _seed_foreign(self, node: SimNode) -> None:
        """Give a replica the data of another history, as if pointed at the wrong primary."""
        history = self.rng.randbytes(16)
        log = self.truth.log(history)
        state: dict[bytes, bytes] = {}
        for _ in range(self.setup.foreign_batches):
            entries = self._entries()
            first = log.last_lsn + 1
            last = first + len(entries) - 1
            record = encode_record(first, last, history, entries)
            apply_entries(state, entries)
            log.commit(Batch(first, last, history, entries, record), state)
        node.disk.seed(state, log.last_lsn, history)

    # ---- faults -----------------------------------------------------------------------------

    def _fault(self) -> None:
        """Inject one fault of the profile's kinds, then schedule the next, until healing."""
        s, rng = self.setup, self.rng
        if self.sched.now >= s.heal_ms:
            return
        p = s.profile
        kinds = [k for k, on in (("partition", p.partitions), ("crash", p.replica_crashes)) if on]
        kinds += ["pause"] if p.pauses else []
        if p.primary_crashes and self.primary.up:
            kinds += ["primary_crash", "primary_pause"] if p.pauses else ["primary_crash"]
        up = [r for r in self.replicas if r.up]
        if kinds and up:
            kind = rng.choice(kinds)
            self.faults[kind] = self.faults.get(kind, 0) + 1
            getattr(self, "_" + kind)(rng.choice(up))
        self.sched.after(max(1, int(rng.expovariate(1 / p.fault_mean_ms))), self._fault)

    def _partition(self, r: SimNode) -> None:
        stream, requests = self.rng.choice([(True, True), (True, False), (False, True)])
        duration = self.rng.randint(100, 3000)
        self.mesh.partition(r.name, duration, stream, requests)
        if requests:  # the DEALER's connection comes back under a new identity
            self.mesh.rebind(r.name)
        self.sched.note(r.name, "partition", stream=stream, requests=requests, ms=duration)

    def _crash(self, r: SimNode) -> None:
        r.crash()
        self.sched.after(self.rng.randint(50, 3000), self._restart_replica, r, r.incarnation)

    def _pause(self, r: SimNode) -> None:
        r.pause(self.rng.randint(100, 2500))

    def _primary_pause(self, _r: SimNode) -> None:
        self.primary.pause(self.rng.randint(100, 2000))

    def _primary_crash(self, _r: SimNode) -> None:
        self.primary.crash()
        s = self.setup
        if self.rng.random() < s.reinit_chance:
            s.reinit_chance = 0.0
            self.primary.reinit()
            self.faults["reinit"] += 1
            self.watch.retention_passed = True
        self.sched.after(
            self.rng.randint(50, 1500), self._restart_primary, self.primary.incarnation
        )

    def _restart_replica(self, r: SimNode, incarnation: int) -> None:
        if not r.up and r.incarnation == incarnation and not self.healed:
            r.start(self.primary.name)

    def _restart_primary(self, incarnation: int) -> None:
        p = self.primary
        if not p.up and p.incarnation == incarnation and not self.healed:
            self._start_primary()

    def _start_primary(self) -> None:
        if self.primary.disk.chain:
            self.checker.check_recovered(self.primary.disk)
        self.primary.start()

    def _heal(self) -> None:
        """Faults stop: links heal, nodes come back, storage stops failing, writes stop."""
        self.healed = True
        self.mesh.heal_all()
        self.primary.resume_now()
        if not self.primary.up:
            self._start_primary()
        for r in self.replicas:
            r.disk.fail_rate = r.disk.boot_fail_rate = 0.0
            r.resume_now()
            if not r.up:
                r.start(self.primary.name)
        self.watch.healed()
        self.sched.every(200, self.watch.check_convergence)

    def _stats(self) -> dict[str, int]:
        served = self.primary.serving.served
        stats = {
            "commits": self.watch.commits,
            "wal_syncs_served": served["wal_syncs"],
            "bootstraps_served": served["bootstraps"],
            "too_old": served["too_old"],
            "register_bootstrap": served["register_bootstrap"],
            "bootstraps": sum(r.bootstraps for r in self.replicas),
            "events": self.sched.events_run,
            "end_ms": self.sched.now,
            "retention_passed": int(self.watch.retention_passed),
            "storage_errors": sum(r.disk.failures for r in self.replicas),
        }
        stats.update(self.faults)
        stats.update(self.mesh.stats)
        return stats


def run_seed(seed: int, broken: str | None = None, trace_lines: int = 12) -> SimResult:
    return Simulation(seed, broken, trace_lines).run()


def _seed_range(text: str) -> range:
    start, _, end = text.partition(":")
    return range(int(start), int(end))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kevo_repl.testing.sim", description=__doc__.split("\n\n")[0]
    )
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="replay one seed")
    group.add_argument("--seeds", type=_seed_range, help="run seeds A:B (B excluded)")
    ap.add_argument(
        "--failover",
        action="store_true",
        help="the failover world: promotion, repoint, rejoin (testing/sim_failover.py)",
    )
    ap.add_argument(
        "--broken",
        choices=sorted({*BROKEN_RULES, *FAILOVER_RULES}),
        help="run a deliberately broken rule",
    )
    ap.add_argument("--trace", type=int, default=12, help="trace lines to print for a failure")
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="print a line for passing seeds too"
    )
    args = ap.parse_args(argv)
    rules = FAILOVER_RULES if args.failover else BROKEN_RULES
    if args.broken and args.broken not in rules:
        ap.error(f"--broken {args.broken} is not a rule of this world: {', '.join(sorted(rules))}")
    run = run_failover_seed if args.failover else run_seed
    seeds = [args.seed] if args.seed is not None else list(args.seeds)
    started = time.perf_counter()
    failed = 0
    for seed in seeds:
        result = run(seed, args.broken, args.trace)
        failed += not result.ok
        if not result.ok or args.verbose or args.seed is not None:
            print(result.report())
    took = time.perf_counter() - started
    print(f"{len(seeds)} seeds, {failed} failed, {took:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
