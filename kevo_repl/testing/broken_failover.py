"""Broken rules of failover, each of which the failover simulation must catch.

Follower mutants replace the real ``Follower`` on every node; the others are rules of the
node or the operator that ``sim_node.py`` / ``sim_operator.py`` check for by name.
``tests/test_sim_failover.py`` asserts each is caught on some seed of a small range.
"""

from __future__ import annotations

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import Action, Status

__all__ = ["FAILOVER_RULES", "follower_for"]


class FollowDiverged(Follower):
    """Takes a diverged tail for a lagging position: follows on top of the other branch."""

    def _begin_rewind(self, shared_lsn: int, reason: str) -> list[Action]:
        out = self._adopt(self.upstream_chain)
        self._move(Status.SYNCING)
        return out + self._wal_sync()


class BootstrapDiverged(Follower):
    """Copies everything instead of rewinding, and throws the tail away unreported."""

    def _begin_rewind(self, shared_lsn: int, reason: str) -> list[Action]:
        return self._begin_bootstrap(f"diverged: {reason}")


class ServeMidRewind(Follower):
    """Serves as soon as the rewound keys are written, before replaying past their LSN."""

    @property
    def consistent(self) -> bool:
        return self.status != Status.BOOTSTRAPPING and self._rewind is None


_FOLLOWERS: dict[str, type[Follower]] = {
    "follow_diverged": FollowDiverged,
    "bootstrap_diverged": BootstrapDiverged,
    "serve_mid_rewind": ServeMidRewind,
}

FAILOVER_RULES: dict[str, str] = {
    "follow_diverged": "a diverged node follows the new history on top of its old tail",
    "bootstrap_diverged": "a diverged node bootstraps instead of rewinding, unreported",
    "serve_mid_rewind": "a rewound node is served before it replays past the rewind's LSN",
    "promote_behind": "the least advanced replica is promoted, and the peer check is skipped",
    "no_handover_wait": "a switchover promotes the target without waiting for it",
    "reuse_history": "a promotion keeps the old history id (no fork point)",
}


def follower_for(broken: str | None) -> type[Follower]:
    return _FOLLOWERS.get(broken or "", Follower)
