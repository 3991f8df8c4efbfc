"""Deliberately broken followers: each breaks one rule, to prove the checkers notice.

A simulator whose checkers never fire proves nothing. ``python -m kevo_repl.testing.sim
--broken RULE --seeds 0:40`` runs the real simulation with one of these mutants in place of
``Follower``; ``tests/test_sim.py`` asserts each is caught on some seed of a small range.
"""

from __future__ import annotations

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import Action, ApplyRecord, SendWalSync
from kevo_repl.core.history import HistoryChain

__all__ = ["BROKEN_RULES", "DRIVER_RULES"]


class ApplyPastGap(Follower):
    """Skips the gap check: applies a record whose first_lsn > applied + 1."""

    def _offer_one(
        self, first: int, last: int, history: bytes, record: bytes, live: bool
    ) -> list[Action]:
        ours = history == self.primary_history == self.history_id
        if ours and first > self.applied_lsn + 1:
            self.applied_lsn = last
            self._ack_due = True
            return [ApplyRecord(first, last, record)]
        return Follower._offer_one(self, first, last, history, record, live)


class ApplyTwice(Follower):
    """Forgets to drop records it already applied."""

    def _offer_one(
        self, first: int, last: int, history: bytes, record: bytes, live: bool
    ) -> list[Action]:
        ours = history == self.primary_history == self.history_id
        if ours and last <= self.applied_lsn:
            return [ApplyRecord(first, last, record)]
        return Follower._offer_one(self, first, last, history, record, live)


class IgnoreHistory(Follower):
    """Treats a primary of another history as its own: catches up on top of foreign data."""

    def on_register_reply(
        self,
        primary_lsn: int,
        retained_from_lsn: int,
        history: bytes | HistoryChain,
        bootstrap_required: bool = False,
        *,
        upstream_is_primary: bool = True,
    ) -> list[Action]:
        theirs = history if isinstance(history, HistoryChain) else HistoryChain.root(history)
        if self.chain and self.chain != theirs:
            self.chain = theirs
            self.history_id = theirs.current
        return Follower.on_register_reply(
            self,
            primary_lsn,
            retained_from_lsn,
            theirs,
            bootstrap_required,
            upstream_is_primary=upstream_is_primary,
        )

    def _offer_one(
        self, first: int, last: int, history: bytes, record: bytes, live: bool
    ) -> list[Action]:
        at = self.upstream_chain.at(last)
        return Follower._offer_one(self, first, last, at, record, live)


class BootstrapOverUnrelated(Follower):
    """Replaces its data with an unrelated primary's, as if --reinit were always given."""

    def _refuse_upstream(self, reason: str, upstream_history: bytes, lsn: int) -> list[Action]:
        return self._begin_bootstrap("history mismatch")


class SkipTooOld(Follower):
    """Answers TooOld by jumping to the oldest retained LSN instead of bootstrapping."""

    def on_too_old(self, retained_from_lsn: int) -> list[Action]:
        if self.pending_request != "wal_sync":
            return []
        self.applied_lsn = retained_from_lsn - 1
        self._request("wal_sync")
        return [SendWalSync(retained_from_lsn, self.config.wal_sync_max_bytes)]


class DeafToBeacons(Follower):
    """Never repairs a gap a beacon reveals: a lost stream tail is never fetched."""

    def on_beacon(self, history_id: bytes, last_lsn: int) -> list[Action]:
        self._last_heard_ms = self._last_stream_ms = self._now_ms  # the stream is alive
        return []


DRIVER_RULES = frozenset({"stale_checkpoint"})
"""Driver mutations (run with the real ``Follower``): ``stale_checkpoint`` reports, on every
tick, the highest durable LSN its WAL's fdatasync ever gave, even after a bootstrap swapped
in another store and started the WAL afresh (``SimNode.stale_durable``)."""

BROKEN_RULES: dict[str, type[Follower]] = {
    "apply_past_gap": ApplyPastGap,
    "apply_twice": ApplyTwice,
    "ignore_history": IgnoreHistory,
    "skip_too_old": SkipTooOld,
    "bootstrap_over_unrelated": BootstrapOverUnrelated,
    "deaf_to_beacons": DeafToBeacons,
    "stale_checkpoint": Follower,
}
