"""The replica's follower state machine: events in, actions out, no IO.

The driver (``node/replica_node.py``) or the simulator (``testing/sim.py``) feeds it what
arrived (stream records, replies, timer ticks) and carries out the actions it returns (send a
request, apply a record, begin or install a bootstrap). Keeping every decision here lets the
same code run against real sockets and against a seeded simulated network.

One rule decides every record, whatever path it came by (live stream or WalSync reply):
``first_lsn == applied + 1`` applies it, ``last_lsn <= applied`` drops it as already applied,
``first_lsn > applied + 1`` is a gap repaired by WalSync from ``applied + 1`` (a stream
record past it is held meanwhile and decided again once the gap is filled, so WalSync asks
for the hole alone: ``core/stream_ahead.py``). A record of another history is never applied.
Status changes go through ``TRANSITIONS`` and nothing else.
"""

from __future__ import annotations

from kevo_repl.core.follower_copy import FollowerCopy
from kevo_repl.core.follower_types import (
    Action,
    ApplyRecord,
    Reconnect,
    SendAck,
    Status,
)
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.join import JoinStep, plan_join

__all__ = ["Follower"]


class Follower(FollowerCopy):
    """Replica-side protocol state. Every public method returns the actions to carry out.

    ``applied_lsn`` advances when an ``ApplyRecord`` is emitted: the driver carries actions
    out in order, and a failed apply comes back through ``storage_failed`` with the store's
    real position, so the follower never believes in a batch the store does not hold.
    """

    __slots__ = ()

    def start(self, now_ms: int) -> list[Action]:
        """Begin the join (the driver has subscribed already): Register."""
        self._now_ms = now_ms
        self._last_heard_ms = self._last_stream_ms = now_ms
        self._started = True
        self._backoff_ms = self.config.backoff_initial_ms
        return self._register()

    def tick(self, now_ms: int) -> list[Action]:
        """Timers: request timeouts, primary silence, heartbeats, backoff."""
        self._now_ms = now_ms
        if not self._started:
            return []
        if self.status in (Status.DISCONNECTED, Status.ERROR):
            out: list[Action] = []
            if self.status == Status.ERROR:
                out += self._maybe_heartbeat()
            if self._retry_at_ms and now_ms >= self._retry_at_ms:
                self._retry_at_ms = 0
                self._last_heard_ms = now_ms  # a new attempt: Register gets its own timeout
                self._move(Status.CONNECTING)
                out += self._register()
            return out
        silent_ms = now_ms - self._last_heard_ms
        if silent_ms > self.config.primary_timeout_ms:
            return self._disconnect(f"primary silent for {silent_ms} ms")
        out = []
        if self._pending and now_ms >= self._pending_deadline_ms:
            out += self._on_request_timeout()
        if self.status != Status.CONNECTING:
            out += self._maybe_heartbeat()
        return out

    @property
    def ack_due(self) -> bool:
        """Something applied or made durable since the last ack."""
        return self._ack_due

    def take_ack(self) -> list[Action]:
        """One coalesced ack for everything applied since the last call."""
        if not self._ack_due or self.status not in (Status.SYNCING, Status.READY):
            return []
        self._ack_due = False
        return [SendAck(self.applied_lsn, self.reported_durable_lsn)]

    def drain_events(self) -> list[tuple[str, dict[str, object]]]:
        """Notable events since the last call, for the driver to log once each."""
        events, self._events = self._events, []
        return events

    def on_register_reply(
        self,
        primary_lsn: int,
        retained_from_lsn: int,
        history: bytes | HistoryChain,
        bootstrap_required: bool = False,
        *,
        upstream_is_primary: bool = True,
    ) -> list[Action]:
        """The upstream's position (its chain, or one history id for a chain of one) decides
        the join (``core/join.py``). ``bootstrap_required`` is the upstream's own view of
        our coverage: honoured when the join would otherwise follow."""
        if self._pending != "register" or self.status != Status.CONNECTING:
            return []  # a stale reply from before a reconnect
        self._pending = ""
        self._heard(primary_lsn)
        self._backoff_ms = self.config.backoff_initial_ms
        theirs = history if isinstance(history, HistoryChain) else HistoryChain.root(history)
        self.upstream_chain = theirs
        self.upstream_is_primary = upstream_is_primary
        self._note("registered", primary_lsn=primary_lsn, applied_lsn=self.applied_lsn)
        if self.serve_from_lsn > self.applied_lsn:  # replaying after a rewind
            shared = self.chain.shared_lsn(theirs)
            if shared is None or shared < self.serve_from_lsn:
                return self._begin_bootstrap(
                    f"a rewind took values at LSN {self.serve_from_lsn} of a branch the "
                    f"upstream left at {shared}: no state of its history can follow"
                )
        plan = plan_join(
            self.chain,
            self.applied_lsn,
            theirs,
            primary_lsn,
            retained_from_lsn,
            upstream_is_primary=upstream_is_primary,
            allow_bootstrap=self.config.allow_bootstrap,
            allow_unrelated=self.config.allow_unrelated_history,
        )
        if plan.step is JoinStep.REFUSE:
            return self._refuse_upstream(plan.reason, theirs.current, primary_lsn)
        if plan.step is JoinStep.REWIND:
            if primary_lsn < plan.rewind_to:  # a lagging replica cannot give the values at
                return self._disconnect(  # the fork yet: a bootstrap would be needless
                    f"diverged after LSN {plan.rewind_to}, and the upstream is only at "
                    f"{primary_lsn}: waiting for it to pass the fork"
                )
            # Our tail past the shared LSN is on another branch: set it aside (the driver
            # keeps its records in a file for the operator), then copy the upstream.
            return self._begin_rewind(plan.rewind_to, plan.reason)
        if plan.step is JoinStep.BOOTSTRAP:  # its chain becomes ours once installed
            return self._begin_bootstrap(plan.reason)
        if bootstrap_required:  # the upstream cannot serve our position (its own view)
            return self._begin_bootstrap("the upstream cannot serve our position")
        # Our position is on its line: its chain is ours from now on. An empty replica
        # takes the history with its first batch, as its store does: until then it has
        # none, so a primary wiped meanwhile is caught up from 1, not bootstrapped.
        out = self._adopt(theirs) if theirs else []  # an upstream with no data yet has
        if self.applied_lsn >= primary_lsn:  # no chain: ours is kept, not emptied
            self._move(Status.READY)
            return out
        self._move(Status.SYNCING)
        return out + self._wal_sync()

    def on_wal_sync_reply(
        self, records: list[tuple[int, int, bytes, bytes]], primary_lsn: int
    ) -> list[Action]:
        """Records as (first_lsn, last_lsn, history_id, record bytes), crc already checked.

        ``primary_lsn`` is the primary's last LSN when it served the reply: reaching it means
        the live stream carries everything after, so the follower is READY.
        """
        if self._pending != "wal_sync" or self.status not in (Status.SYNCING, Status.READY):
            return []
        self._pending = ""
        self._heard(primary_lsn)
        out: list[Action] = []
        for first, last, history, record in records:
            out += self._offer(first, last, history, record)
            if self._pending or self.status not in (Status.SYNCING, Status.READY):
                return out  # a gap inside the reply or a foreign history: already handled
        self._ahead.prune(self.applied_lsn)
        if self.applied_lsn >= primary_lsn:
            self._caught_up()
            return out
        if not self._ahead.end_of_gap(self.applied_lsn) and self._stream_flowing():
            # What follows is on the stream, in flight: fetching it too would carry it twice
            # (a saturated link). A gap shows at its next record, or at the next beacon.
            return out
        return out + self._wal_sync()

    def _stream_flowing(self) -> bool:
        """Records came on the stream while the last WalSync was out."""
        return self._stream_records > self._stream_records_at_sync

    def _caught_up(self) -> None:
        if self.status == Status.SYNCING:
            self._move(Status.READY)
            self._note("caught_up", applied_lsn=self.applied_lsn)

    def on_request_refused(self, code: str, message: str) -> list[Action]:
        """The pending request got an Error reply: log it, back off, register again."""
        self._note("request_refused", code=code, message=message, request=self._pending)
        if not self._pending:
            return []
        request, self._pending = self._pending, ""
        return self._disconnect(f"the upstream refused our {request.replace('_', ' ')}: {message}")

    def on_not_registered(self) -> list[Action]:
        """The primary does not know us (it restarted): register again, keeping our data."""
        if self.status in (Status.CONNECTING, Status.DISCONNECTED):
            return []
        if self.status == Status.ERROR:
            return []
        self._note("primary_forgot_us", applied_lsn=self.applied_lsn)
        self._move(Status.CONNECTING)
        return self._register()

    def on_record(
        self, first_lsn: int, last_lsn: int, history_id: bytes, record: bytes
    ) -> list[Action]:
        """A live record from SUB (crc already checked by the adapter)."""
        self._last_heard_ms = self._last_stream_ms = self._now_ms
        if self.status not in (Status.SYNCING, Status.READY):
            return []  # joining or bootstrapping: WalSync fetches it later
        self._heard(last_lsn)
        if last_lsn > self.applied_lsn:  # news, not a duplicate: the stream is flowing
            self._stream_records += 1
        return self._offer(first_lsn, last_lsn, history_id, record, live=True)

    def on_beacon(self, history_id: bytes, last_lsn: int) -> list[Action]:
        """Beacons follow the records on the same PUB, so ``applied < last_lsn`` is a gap."""
        self._last_heard_ms = self._last_stream_ms = self._now_ms
        if self.status == Status.ERROR and self._refused_history:
            if history_id == self._refused_history:
                return []
            self._refused_history = b""  # the primary changed (restored?): look again
            self._move(Status.CONNECTING)
            return self._register()
        if self.status not in (Status.SYNCING, Status.READY):
            return []
        if history_id != self.primary_history:
            return self._foreign_history()
        self._heard(last_lsn)
        if self.applied_lsn < last_lsn and not self._pending:
            return self._gap(last_lsn)
        return []

    def on_heartbeat_reply(self, primary_lsn: int) -> list[Action]:
        """Replies keep the primary "heard"; if the stream itself went quiet (no record or
        beacon for ``primary_timeout_ms``) while the primary is ahead, catch up by WalSync
        rather than stay READY and fall behind behind a dead SUB."""
        self._heard(primary_lsn)
        stream_quiet = self._now_ms - self._last_stream_ms > self.config.primary_timeout_ms
        if (
            stream_quiet
            and self.applied_lsn < primary_lsn
            and not self._pending
            and self.status in (Status.SYNCING, Status.READY)
        ):
            return self._gap(primary_lsn)
        return []

    def durable(self, lsn: int) -> None:
        """The store synced everything up to ``lsn`` (checkpoint); never beyond applied."""
        lsn = min(lsn, self.applied_lsn)
        if lsn > self.durable_lsn:
            self.durable_lsn = lsn
            self._ack_due = True

    def storage_failed(
        self,
        message: str,
        store_applied_lsn: int,
        retry_after_ms: int,
        store_history_id: bytes | None = None,
    ) -> list[Action]:
        """A local write failed (full disk, IO error): report ERROR, retry later.

        ``store_applied_lsn`` (and ``store_history_id``) are what the store really holds; the
        follower rewinds to them. Pass the history: when ``InstallBootstrap`` fails the store
        still holds the old history, and registering under the snapshot's history would
        catch up on top of the old data. The durable LSN is forgotten (0, which only makes
        the primary keep more WAL) until the driver's next ``durable`` call: after a failed
        install it was the snapshot's, which the store does not hold.
        """
        self.error_message = message
        self.applied_lsn = store_applied_lsn
        if store_history_id is not None:
            self.history_id = store_history_id
            if store_applied_lsn and self.chain.at(store_applied_lsn) != store_history_id:
                self.chain = self._chain_before_install  # the install failed: not ours yet
        self.durable_lsn = 0
        self._pending = ""
        self._note("storage_failed", message=message, applied_lsn=store_applied_lsn)
        if self.status != Status.ERROR:
            self._move(Status.ERROR)
            self.error_message = message
        self._retry_at_ms = self._now_ms + retry_after_ms
        return [self._heartbeat()]

    def _offer(
        self, first: int, last: int, history: bytes, record: bytes, live: bool = False
    ) -> list[Action]:
        """Decide one record; after an apply, the stream records held past the gap it
        closed follow, each decided again (core/stream_ahead.py)."""
        out = self._offer_one(first, last, history, record, live)
        while out and isinstance(out[-1], ApplyRecord):
            held = self._ahead.take(self.applied_lsn + 1)
            if held is None:
                break
            out += self._offer_one(*held, live=False)
        return out

    def _offer_one(
        self, first: int, last: int, history: bytes, record: bytes, live: bool
    ) -> list[Action]:
        if history != self.upstream_chain.at(last) or history != self.upstream_chain.at(first):
            self.counters.foreign_records += 1
            return self._foreign_history()
        if last <= self.applied_lsn:
            self.counters.dropped_duplicates += 1
            return []
        if first == self.applied_lsn + 1:
            self.applied_lsn = last
            self.history_id = history
            self._ack_due = True
            if live and not self._pending and self.applied_lsn >= self.primary_lsn:
                self._caught_up()  # the stream itself brought us to the upstream's position
            return [ApplyRecord(first, last, record)]
        if first <= self.applied_lsn:
            # Remote input, not our invariant: the primary's batch boundaries differ from ours
            # (a forged record, or a primary that lost an unsynced tail). Never apply it.
            self._note("straddling_record", first_lsn=first, last_lsn=last)
            return self._disconnect(f"record {first}..{last} straddles applied {self.applied_lsn}")
        if live:
            self._ahead.keep(first, last, history, record)
        return [] if self._pending else self._gap(first - 1)

    def _on_request_timeout(self) -> list[Action]:
        kind, self._pending = self._pending, ""
        self._note("request_timeout", request=kind)
        if kind in ("register", "bootstrap", "rewind"):
            self._rewind = None  # a rewind starts over from the next Register
            return self._disconnect(f"{kind} timed out")
        return [Reconnect(f"{kind} timed out"), *self._wal_sync()]
