"""Seeded deterministic simulation of a primary and its replicas (VOPR / FoundationDB style).

One seed is one run: ``random.Random(seed)`` draws a fault profile's parameters and drives
every random choice, and a virtual-time scheduler orders every event, so a seed replays
exactly. A run has two phases: until ``heal_ms`` clients write while faults (message loss,
partitions, crashes, pauses, storage errors, a wiped primary) are injected; then faults and
writes stop and every replica must converge to the primary before a deadline. The checkers
run throughout; the first violation ends the run and prints the command that replays it::

    python -m kevo_repl.testing.sim --seed 17
    python -m kevo_repl.testing.sim --seeds 0:250 [--broken apply_past_gap]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import Status
from kevo_repl.core.registry import WaitResult
from kevo_repl.testing.broken import BROKEN_RULES
from kevo_repl.testing.broken_failover import FAILOVER_RULES
from kevo_repl.testing.checkers import Checker, SimResult, Truth, Violation
from kevo_repl.testing.disk import PrimaryWal, ReplicaStore, apply_entries
from kevo_repl.testing.net import Network
from kevo_repl.testing.profiles import Setup, make_setup
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_failover import run_failover_seed
from kevo_repl.testing.sim_primary import SimPrimary
from kevo_repl.testing.sim_replica import SimReplica

__all__ = ["SimResult", "Simulation", "main", "run_seed"]

_FAULTS = ("partition", "crash", "pause", "primary_crash", "primary_pause", "reinit")


class Simulation:
    """Builds one seed's world, injects its faults, and checks it converges."""

    def __init__(self, seed: int, broken: str | None = None, trace_lines: int = 12) -> None:
        self.seed, self.broken, self.trace_lines = seed, broken, trace_lines
        self.rng = rng = random.Random(seed)
        self.setup: Setup = make_setup(seed, rng)
        self.sched = Scheduler()
        self.truth = Truth()
        self.checker = Checker(self.truth)
        self.net = Network(self.sched, rng, self.setup.net)
        self.primary = SimPrimary(
            self.sched, rng, self.net, self.truth, self.checker, self.setup.primary
        )
        self.primary.on_drop = self._on_drop
        self.primary.on_wait = self._on_wait
        follower_cls: type[Follower] = BROKEN_RULES[broken] if broken else Follower
        p = self.setup.profile
        self.replicas = [
            SimReplica(
                cfg.replica_id,
                self.sched,
                self.net,
                self.checker,
                cfg,
                follower_cls,
                ReplicaStore(rng, p.disk_fail_rate, p.boot_fail_rate),
                self.setup.tick_ms[i],
                self.setup.checkpoint_ms[i],
            )
            for i, cfg in enumerate(self.setup.followers)
        ]
        for r in self.replicas:
            r.stale_durable = broken == "stale_checkpoint"
        self.healed = False
        self.retention_passed = False  # some replica once needed what the WAL had dropped
        self.exempt: set[str] = set()  # dropped below by the size cap or while unknown
        self.covered_at_heal: dict[str, bool] = {}
        self.converged_at = 0
        self.faults = dict.fromkeys(_FAULTS, 0)

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        s, sched = self.setup, self.sched
        try:
            if s.foreign is not None:
                self._seed_foreign(self.replicas[s.foreign].store)
                self.retention_passed = True
            self.primary.start()
            for i, r in enumerate(self.replicas):
                sched.at(s.start_ms[i], self._start_replica, r)
            sched.after(0, self._write)
            sched.after(self.rng.randint(200, 800), self._fault)
            sched.at(s.heal_ms, self._heal)
            sched.run_until(s.deadline_ms + 1000)
            if not self.converged_at:
                self._check_convergence(final=True)
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
        self.primary.write(self.primary.random_entries(), wait, rng.randint(100, 800))
        self.sched.after(max(1, int(rng.expovariate(1 / s.write_mean_ms))), self._write)

    def _start_replica(self, r: SimReplica) -> None:
        if r.incarnation == 0:  # a late joiner may have been started by the heal already
            r.start()

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

    def _partition(self, r: SimReplica) -> None:
        stream, requests = self.rng.choice([(True, True), (True, False), (False, True)])
        duration = self.rng.randint(100, 3000)
        self.net.partition(r.name, stream, requests, duration)
        self.sched.note(r.name, "partition", stream=stream, requests=requests, ms=duration)

    def _crash(self, r: SimReplica) -> None:
        r.crash()
        self.sched.after(self.rng.randint(50, 3000), self._restart_replica, r, r.incarnation)

    def _pause(self, r: SimReplica) -> None:
        r.pause(self.rng.randint(100, 2500))

    def _primary_pause(self, _r: SimReplica) -> None:
        self.primary.pause(self.rng.randint(100, 2000))

    def _primary_crash(self, _r: SimReplica) -> None:
        self.primary.crash()
        s = self.setup
        if self.rng.random() < s.reinit_chance:
            s.reinit_chance = 0.0
            self.primary.reinit()
            self.faults["reinit"] += 1
            self.retention_passed = True
        self.sched.after(
            self.rng.randint(50, 1500), self._restart_primary, self.primary.incarnation
        )

    def _restart_replica(self, r: SimReplica, incarnation: int) -> None:
        if not r.up and r.incarnation == incarnation and not self.healed:
            r.start()

    def _restart_primary(self, incarnation: int) -> None:
        if not self.primary.up and self.primary.incarnation == incarnation and not self.healed:
            self.primary.restart()

    def _heal(self) -> None:
        """Faults stop: links heal, nodes come back, storage stops failing, writes stop."""
        self.healed = True
        self.exempt.clear()
        self.net.heal_all()
        self.net.params.reply_drop = 0.0
        self.primary.resume_now()
        if not self.primary.up:
            self.primary.restart()
        wal = self.primary.wal
        for r in self.replicas:
            r.store.fail_rate = r.store.boot_fail_rate = 0.0
            r.resume_now()
            if not r.up:
                r.start()
            st = r.store
            ours = st.history_id in (b"", wal.history_id)  # as the primary decides: any other
            self.covered_at_heal[r.name] = ours and st.applied_lsn + 1 >= wal.retained_from
        self.sched.note("sim", "heal", primary_lsn=wal.last_lsn, retained_from=wal.retained_from)
        self.sched.every(200, self._check_convergence)

    def _seed_foreign(self, store: ReplicaStore) -> None:
        """Give a replica the data of another history, as if pointed at the wrong primary."""
        wal = PrimaryWal(self.rng.randbytes(16), 16)
        state: dict[bytes, bytes] = {}
        log = self.truth.log(wal.history_id)
        for _ in range(self.setup.foreign_batches):
            wal.append(self.primary.random_entries())
            for batch in wal.sync():
                apply_entries(state, batch.entries)
                log.commit(batch, state)
        store.seed(state, wal.last_lsn, wal.history_id)

    # ---- checks that need the whole world ---------------------------------------------------

    def _on_drop(self, forced: bool, old_retained: int) -> None:
        """Retention dropped segments: did it drop what a known replica needs to resume?

        A replica resumes from its applied LSN, or from its durable LSN after a crash, so the
        floor must not pass ``durable + 1`` of a replica the registry knows, unless the size
        cap forced it. Replicas it dropped legitimately are exempt from the after-heal check.
        """
        wal = self.primary.wal
        known = {r.replica_id for r in self.primary.registry.replicas()}
        new_retained = wal.retained_from
        for r in self.replicas:
            st = r.store
            if {st.history_id, st.durable_history} - {b"", wal.history_id}:
                continue  # switching histories: it needs a snapshot whatever retention does
            for need in (st.durable_lsn + 1, st.applied_lsn + 1):
                if need >= new_retained:
                    continue
                self.retention_passed = True
                if need < old_retained:
                    continue  # uncovered before this drop
                if forced or r.name not in known:
                    self.exempt.add(r.name)
                else:
                    raise Violation(
                        "retention",
                        f"WAL dropped to {new_retained} (from {old_retained}) while registered "
                        f"{r.name} would resume from {need - 1}",
                    )

    def _on_wait(self, result: WaitResult, lsn: int, wanted: int) -> None:
        history = self.primary.history_id
        really = sum(1 for r in self.replicas if r.max_applied.get(history, 0) >= lsn)
        if result.replicas_applied > really or (
            not result.timed_out and result.replicas_applied < wanted
        ):
            raise Violation(
                "wait",
                f"write {lsn} reported {result.replicas_applied} replicas (wanted {wanted}, "
                f"timed_out={result.timed_out}); {really} ever applied it",
            )

    def _check_convergence(self, final: bool = False) -> bool:
        if self.converged_at:
            return False
        wal, state, now = self.primary.wal, self.primary.state, self.sched.now
        waiting = []
        for r in self.replicas:
            st = r.store
            other = st.history_id not in (b"", wal.history_id)
            must_refuse = not r.config.allow_bootstrap or (
                st.applied_lsn > 0 and not r.config.allow_unrelated_history
            )
            if other and must_refuse:  # it keeps its data and says why, in ERROR
                if r.follower is not None and r.follower.status != Status.ERROR:
                    waiting.append(
                        f"{r.name} should refuse another history but is {r.follower.status.name}"
                    )
                continue
            why = self.checker.check_converged(r.name, r.follower, r.store, wal, state)
            if why:
                waiting.append(why)
        if not waiting:
            self.converged_at = now
            self._final_checks()
            self.sched.after(300, self.sched.stop)
            return False
        if final or now >= self.setup.deadline_ms:
            raise Violation(
                "convergence",
                f"not converged {now - self.setup.heal_ms} ms after healing: " + "; ".join(waiting),
            )
        return True

    def _final_checks(self) -> None:
        total = sum(len(r.bootstrap_times) for r in self.replicas)
        if total and not self.retention_passed:
            raise Violation(
                "bootstrap", f"{total} bootstraps though the WAL always covered every replica"
            )
        heal = self.setup.heal_ms
        for r in self.replicas:
            installs = sum(1 for t in r.install_times if t >= heal)
            if installs > 1:
                raise Violation(
                    "bootstrap", f"{r.name} installed {installs} snapshots after healing"
                )
            began = any(t >= heal for t in r.bootstrap_times)
            if began and self.covered_at_heal.get(r.name) and r.name not in self.exempt:
                raise Violation(
                    "bootstrap", f"{r.name} bootstrapped after healing though the WAL covered it"
                )

    def _stats(self) -> dict[str, int]:
        stats = dict(self.primary.stats)
        stats["bootstraps"] = sum(len(r.bootstrap_times) for r in self.replicas)
        stats["events"] = self.sched.events_run
        stats["end_ms"] = self.sched.now
        stats["retention_passed"] = int(self.retention_passed)
        stats["storage_errors"] = sum(r.store.failures for r in self.replicas)
        stats.update(self.faults)
        stats.update(self.net.stats)
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
