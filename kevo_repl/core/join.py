"""What a follower does with a Register reply: follow, bootstrap, rewind, or refuse.

Pure: the follower's position and options in, one ``JoinPlan`` out. The rules (see
``core/history.py`` for how positions relate):

* on the upstream's line (its chain shares our last LSN, or we hold nothing): follow, by
  WalSync from our next LSN, or bootstrap once if its WAL no longer covers that LSN;
* ahead of a *replica* upstream on the same line: follow anyway, it is only lagging (its
  stream catches up with us); ahead of a *primary*: it lost data we have;
* diverged (our tail past the point where the lines part is on another branch, as an old
  primary after a failover): rewind to the shared LSN, then follow;
* an upstream on a history we moved past (an old primary not yet fenced), or of an
  unrelated history, or a primary that lost data: refuse and keep our data, unless told to
  replace it (``--reinit``), since following would erase what may be the only good copy.

``--no-bootstrap`` turns every bootstrap into a refusal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kevo_repl.core.history import HistoryChain, Verdict, relate

__all__ = ["JoinPlan", "JoinStep", "plan_join"]


class JoinStep(enum.Enum):
    FOLLOW = "follow"
    BOOTSTRAP = "bootstrap"
    REWIND = "rewind"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class JoinPlan:
    step: JoinStep
    reason: str
    rewind_to: int = 0  # REWIND: the shared LSN to cut our tail back to


def plan_join(
    ours: HistoryChain,
    applied_lsn: int,
    theirs: HistoryChain,
    their_lsn: int,
    retained_from_lsn: int,
    *,
    upstream_is_primary: bool,
    allow_bootstrap: bool,
    allow_unrelated: bool,
) -> JoinPlan:
    relation = relate(ours, applied_lsn, theirs, their_lsn)
    verdict = relation.verdict
    refuse: str | None = None
    if verdict is Verdict.UNRELATED:
        refuse = relation.reason
    elif verdict is Verdict.UPSTREAM_OLDER:
        refuse = f"{relation.reason}; it must follow the newer history"
    elif verdict is Verdict.UPSTREAM_BEHIND and upstream_is_primary:
        refuse = f"{relation.reason}: the primary lost data"
    elif verdict is Verdict.DIVERGED:
        return JoinPlan(JoinStep.REWIND, relation.reason, relation.shared_lsn)
    if refuse is not None:
        if not allow_unrelated:
            return JoinPlan(
                JoinStep.REFUSE,
                f"{refuse}; we hold data up to LSN {applied_lsn} and refuse to replace it. "
                "If the primary lost its data, promote or restore from this node; to discard "
                "our data and copy the upstream's, restart with --reinit",
            )
        return _bootstrap(f"replacing our data (--reinit): {refuse}", allow_bootstrap)
    if applied_lsn + 1 < retained_from_lsn:
        why = f"WAL too old (it starts at {retained_from_lsn}, we need {applied_lsn + 1})"
        return _bootstrap(why, allow_bootstrap)
    return JoinPlan(JoinStep.FOLLOW, "")


def _bootstrap(why: str, allowed: bool) -> JoinPlan:
    if not allowed:
        return JoinPlan(
            JoinStep.REFUSE, f"a bootstrap is needed ({why}) but --no-bootstrap forbids it"
        )
    return JoinPlan(JoinStep.BOOTSTRAP, why)
