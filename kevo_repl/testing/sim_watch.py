"""The single-primary world's invariants, watched on its nodes as they step.

The failover world watches histories and promotions; this one watches one primary and the
replicas that join it: every apply is of a committed batch in order, every store is a
prefix of the primary's history, a Register never reports more than the primary holds,
a bootstrap starts only when the primary's WAL cannot cover the replica (or for an unrelated
history under ``--reinit``, never without it), retention never drops what a registered
replica needs to resume, a replicated write's count is honest, and after healing every
replica converges. ``Watch.hooks`` are the ``NodeHooks`` every node of the world reports to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kevo_repl.core.follower_types import Status
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.registry import WaitResult
from kevo_repl.testing.checkers import Checker, Truth, Violation
from kevo_repl.testing.messages import Batch, Register, RegisterReply
from kevo_repl.testing.scheduler import Scheduler
from kevo_repl.testing.sim_node import NodeHooks, SimNode

__all__ = ["Watch"]

# Replies after which the follower may begin a bootstrap; anything else starting one is a bug.
_BOOTSTRAP_SOURCES = frozenset({"register_reply", "too_old", "chunk"})


@dataclass(slots=True)
class Watch:
    sched: Scheduler
    truth: Truth
    checker: Checker
    heal_ms: int
    deadline_ms: int
    primary: SimNode | None = None
    replicas: list[SimNode] = field(default_factory=list)
    commits: int = 0
    retention_passed: bool = False  # some replica once needed what the WAL had dropped
    exempt: set[str] = field(default_factory=set)  # dropped below by the size cap or unknown
    covered_at_heal: dict[str, bool] = field(default_factory=dict)
    converged_at: int = 0

    def hooks(self) -> NodeHooks:
        return NodeHooks(
            self._committed,
            _no_fork,
            self._waited,
            self._stepped,
            registering=self._registering,
            joined=self._joined,
            bootstrapping=self._bootstrapping,
            applying=self._applying,
            dropped=self._dropped,
        )

    @property
    def p(self) -> SimNode:
        assert self.primary is not None
        return self.primary

    # ---- at every step ------------------------------------------------------------------------

    def _committed(self, batch: Batch, state: dict[bytes, bytes]) -> None:
        self.truth.log(batch.history_id).commit(batch, state)
        self.commits += 1

    def _stepped(self, node: SimNode) -> None:
        f = node.follower
        if node is not self.primary and f is not None:
            self.checker.check_agreement(node.name, f, node.disk)
            self.checker.check_state(node.name, node.disk)

    def _applying(self, node: SimNode, batch: Batch) -> None:
        self.checker.check_apply(node.name, node.disk, batch)
        self.sched.note(node.name, "apply", first=batch.first_lsn, last=batch.last_lsn)

    def _registering(self, node: SimNode, msg: Register) -> None:
        d = node.disk
        foreign = bool(msg.history_id) and msg.history_id != d.chain.current
        if node is self.primary and not foreign and msg.applied_lsn > d.synced_lsn:
            raise Violation(
                "durability",
                f"{msg.replica_id} applied {msg.applied_lsn}, primary has only {d.synced_lsn}",
            )

    def _joined(
        self, node: SimNode, msg: RegisterReply, before: tuple[bool, ...], began: bool
    ) -> None:
        live, held_other, related = before
        f = node.follower
        if live and began and held_other and not node.config.allow_unrelated_history:
            raise Violation(
                "unrelated",
                f"{node.name} bootstraps away its data for a primary of an unrelated history "
                "without --reinit",
            )
        if live and began and related and not msg.bootstrap_required:
            raise Violation("bootstrap", f"{node.name} bootstraps though its WAL range is retained")
        if live and msg.bootstrap_required and not began and f and f.status != Status.ERROR:
            raise Violation(
                "bootstrap", f"{node.name} skipped a required bootstrap ({f.status.name})"
            )

    def _bootstrapping(self, node: SimNode, source: str) -> None:
        if source not in _BOOTSTRAP_SOURCES:
            raise Violation("bootstrap", f"{node.name} began a bootstrap after {source}")

    def _waited(self, result: WaitResult, lsn: int, wanted: int, history: bytes) -> None:
        really = sum(1 for r in self.replicas if r.max_applied.get(history, 0) >= lsn)
        if result.replicas_applied > really or (
            not result.timed_out and result.replicas_applied < wanted
        ):
            raise Violation(
                "wait",
                f"write {lsn} reported {result.replicas_applied} replicas (wanted {wanted}, "
                f"timed_out={result.timed_out}); {really} ever applied it",
            )

    def _dropped(self, node: SimNode, forced: bool, old_retained: int) -> None:
        """Retention dropped segments: did it drop what a known replica needs to resume?

        A replica resumes from its applied LSN, or from its WAL's synced LSN after a crash,
        so the floor must not pass ``synced + 1`` of a replica the registry knows, unless the
        size cap forced it. Replicas it dropped legitimately are exempt after healing.
        """
        if node is not self.primary:
            return
        d = node.disk
        ours = d.chain.current
        known = {r.replica_id for r in node.serving.registry.replicas()}
        new_retained = d.retained_from
        for r in self.replicas:
            st = r.disk
            if {st.history_id, st.ckpt_history} - {b"", ours}:
                continue  # switching histories: it needs a snapshot whatever retention does
            for need in (st.synced_lsn + 1, st.applied_lsn + 1):
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

    # ---- after healing ------------------------------------------------------------------------

    def healed(self) -> None:
        """Faults stopped: note which replicas the primary's WAL still covers."""
        self.exempt.clear()
        d = self.p.disk
        for r in self.replicas:
            st = r.disk
            ours = st.history_id in (b"", d.chain.current)  # as the primary decides
            self.covered_at_heal[r.name] = ours and st.applied_lsn + 1 >= d.retained_from
        self.sched.note("sim", "heal", primary_lsn=d.synced_lsn, retained_from=d.retained_from)

    def check_convergence(self, final: bool = False) -> bool:
        """True while still waiting; stops the run once every replica converged."""
        if self.converged_at:
            return False
        p, now = self.p.disk, self.sched.now
        waiting = []
        for r in self.replicas:
            st = r.disk
            other = st.history_id not in (b"", p.chain.current)
            must_refuse = not r.config.allow_bootstrap or (
                st.applied_lsn > 0 and not r.config.allow_unrelated_history
            )
            if other and must_refuse:  # it keeps its data and says why, in ERROR
                if r.follower is not None and r.follower.status != Status.ERROR:
                    waiting.append(
                        f"{r.name} should refuse another history but is {r.follower.status.name}"
                    )
                continue
            why = self.checker.check_converged(r.name, r.follower, st, p)
            if why:
                waiting.append(why)
        if not waiting:
            self.converged_at = now
            self._final_checks()
            self.sched.after(300, self.sched.stop)
            return False
        if final or now >= self.deadline_ms:
            raise Violation(
                "convergence",
                f"not converged {now - self.heal_ms} ms after healing: " + "; ".join(waiting),
            )
        return True

    def _final_checks(self) -> None:
        total = sum(r.bootstraps for r in self.replicas)
        if total and not self.retention_passed:
            raise Violation(
                "bootstrap", f"{total} bootstraps though the WAL always covered every replica"
            )
        for r in self.replicas:
            installs = sum(1 for t in r.install_times if t >= self.heal_ms)
            if installs > 1:
                raise Violation(
                    "bootstrap", f"{r.name} installed {installs} snapshots after healing"
                )
            began = any(t >= self.heal_ms for t in r.bootstrap_times)
            if began and self.covered_at_heal.get(r.name) and r.name not in self.exempt:
                raise Violation(
                    "bootstrap", f"{r.name} bootstrapped after healing though the WAL covered it"
                )


def _no_fork(_chain: HistoryChain) -> None:
    raise Violation("split", "a node forked a history in the single-primary world")
