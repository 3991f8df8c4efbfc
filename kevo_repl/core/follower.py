"""The replica's follower state machine: events in, actions out, no IO.

The driver (``node/replica_node.py``) or the simulator (``testing/sim.py``) feeds it what
arrived (stream records, replies, timer ticks) and carries out the actions it returns (send a
request, apply a record, begin or install a bootstrap). Keeping every decision here lets the
same code run against real sockets and against a seeded simulated network.

One rule decides every record, whatever path it came by (live stream or WalSync reply):
``first_lsn == applied + 1`` applies it, ``last_lsn <= applied`` drops it as already applied,
``first_lsn > applied + 1`` is a gap repaired by WalSync from ``applied + 1``. A record of
another history is never applied. Status changes go through ``TRANSITIONS`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kevo_repl.core.bootstrap_receiver import BootstrapReceiver, ChunkVerdict
from kevo_repl.core.follower_types import (
    TRANSITIONS,
    Action,
    ApplyRecord,
    BeginBootstrap,
    DiscardTail,
    FollowerConfig,
    InstallBootstrap,
    InvariantError,
    Reconnect,
    SaveChain,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendWalSync,
    Status,
    WriteChunk,
)
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.join import JoinStep, plan_join

__all__ = ["Follower"]


@dataclass(slots=True)
class _Counters:
    bootstraps: int = 0
    catchups: int = 0
    gaps: int = 0
    dropped_duplicates: int = 0
    foreign_records: int = 0


@dataclass(slots=True)
class Follower:
    """Replica-side protocol state. Every public method returns the actions to carry out.

    ``applied_lsn`` advances when an ``ApplyRecord`` is emitted: the driver carries actions
    out in order, and a failed apply comes back through ``storage_failed`` with the store's
    real position, so the follower never believes in a batch the store does not hold.
    """

    config: FollowerConfig
    applied_lsn: int = 0
    durable_lsn: int = 0
    history_id: bytes = b""  # of the last record applied: what the store holds
    chain: HistoryChain = field(default_factory=HistoryChain)  # ours (saved by the driver)
    status: Status = Status.CONNECTING
    primary_lsn: int = 0  # the upstream's last LSN (a primary or a replica)
    upstream_chain: HistoryChain = field(default_factory=HistoryChain)
    upstream_is_primary: bool = True
    error_message: str = ""
    counters: _Counters = field(default_factory=_Counters)
    _events: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    _now_ms: int = 0
    _last_heard_ms: int = 0
    _last_stream_ms: int = 0  # last record or beacon on SUB
    _last_heartbeat_ms: int = -(10**12)
    _retry_at_ms: int = 0
    _backoff_ms: int = 0
    _pending: str = ""  # the one request in flight: "register" | "wal_sync" | "bootstrap" | ""
    _pending_deadline_ms: int = 0
    _ack_due: bool = False
    _boot: BootstrapReceiver = field(default_factory=lambda: BootstrapReceiver(credit=0))
    _started: bool = False
    _refused_history: bytes = b""  # the primary history we refused to follow (ERROR)
    _chain_before_install: HistoryChain = field(default_factory=HistoryChain)

    def __post_init__(self) -> None:
        if not self.chain and self.history_id:  # a store from before chains: one history
            self.chain = HistoryChain.root(self.history_id)

    @property
    def primary_history(self) -> bytes:
        """The upstream's current history (its beacons and new records carry it)."""
        return self.upstream_chain.current

    @property
    def bootstrap_progress(self) -> float:
        return self._boot.progress if self.status == Status.BOOTSTRAPPING else 0.0

    @property
    def last_heard_ms(self) -> int:
        """When the upstream was last heard (a record, a beacon or a reply)."""
        return self._last_heard_ms

    @property
    def pending_request(self) -> str:
        return self._pending

    # ---- lifecycle ------------------------------------------------------------------------

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

    def take_ack(self) -> list[Action]:
        """One coalesced ack for everything applied since the last call."""
        if not self._ack_due or self.status not in (Status.SYNCING, Status.READY):
            return []
        self._ack_due = False
        return [SendAck(self.applied_lsn, self.durable_lsn)]

    def drain_events(self) -> list[tuple[str, dict[str, object]]]:
        """Notable events since the last call, for the driver to log once each."""
        events, self._events = self._events, []
        return events

    # ---- replies --------------------------------------------------------------------------

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
            # Our tail past the shared LSN is on another branch: set it aside (the driver
            # keeps its records in a file for the operator), then copy the upstream.
            self._note("diverged", shared_lsn=plan.rewind_to, applied_lsn=self.applied_lsn)
            if not self.config.allow_bootstrap:
                return self._begin_bootstrap(f"diverged: {plan.reason}")  # refused: kept
            discard = DiscardTail(plan.rewind_to, self.applied_lsn)
            return [discard, *self._begin_bootstrap(f"diverged: {plan.reason}")]
        if plan.step is JoinStep.BOOTSTRAP:  # its chain becomes ours once installed
            return self._begin_bootstrap(plan.reason)
        if bootstrap_required:  # the upstream cannot serve our position (its own view)
            return self._begin_bootstrap("the upstream cannot serve our position")
        # Our position is on its line: its chain is ours from now on. An empty replica
        # takes the history with its first batch, as its store does: until then it has
        # none, so a primary wiped meanwhile is caught up from 1, not bootstrapped.
        out = self._adopt(theirs)
        if self.applied_lsn >= primary_lsn:
            self._move(Status.READY)
            return out
        self._move(Status.SYNCING)
        return out + self._wal_sync()

    def _adopt(self, chain: HistoryChain) -> list[Action]:
        if chain == self.chain:
            return []
        self.chain = chain
        return [SaveChain(chain)]

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
        if self.applied_lsn >= primary_lsn:
            if self.status == Status.SYNCING:
                self._move(Status.READY)
                self._note("caught_up", applied_lsn=self.applied_lsn)
            return out
        return out + self._wal_sync()

    def on_too_old(self, retained_from_lsn: int) -> list[Action]:
        if self._pending != "wal_sync":
            return []
        self._pending = ""
        self._heard(self.primary_lsn)
        self._note("too_old", applied_lsn=self.applied_lsn, retained_from_lsn=retained_from_lsn)
        return self._begin_bootstrap("WAL too old")

    def on_bootstrap_chunk(
        self,
        session_id: int,
        seq: int,
        keys: list[bytes],
        values: list[bytes],
        progress: float,
        is_last: bool,
        snapshot_lsn: int,
        history_id: bytes,
    ) -> list[Action]:
        if self.status != Status.BOOTSTRAPPING or self._pending != "bootstrap":
            return []
        self._heard(self.primary_lsn)
        verdict = self._boot.accept(session_id, seq, progress, is_last)
        if verdict is ChunkVerdict.BROKEN:
            self._note("bootstrap_broken", expected_seq=self._boot.next_seq, got_seq=seq)
            return [Reconnect("bootstrap stream out of order"), *self._begin_bootstrap("restart")]
        self._pending_deadline_ms = self._now_ms + self.config.request_timeout_ms
        out: list[Action] = [WriteChunk(keys, values)]
        if verdict is ChunkVerdict.LAST:
            self._pending = ""
            self.history_id = history_id
            self.applied_lsn = snapshot_lsn
            self.durable_lsn = snapshot_lsn
            self._heard(snapshot_lsn)
            self._note("bootstrap_done", snapshot_lsn=snapshot_lsn)
            self._chain_before_install = self.chain
            out.append(InstallBootstrap(snapshot_lsn, history_id))
            out += self._adopt(self.upstream_chain)
            self._move(Status.SYNCING)
            return out + self._wal_sync()
        grant = self._boot.grant()
        if grant:
            session = self._boot.session_id
            out.append(SendBootstrap(session, grant, self.config.bootstrap_chunk_bytes))
        return out

    def on_request_refused(self, code: str, message: str) -> list[Action]:
        """The pending request got an Error reply: log it, back off, register again."""
        self._note("request_refused", code=code, message=message, request=self._pending)
        if not self._pending:
            return []
        self._pending = ""
        return self._disconnect(f"{code}: {message}")

    def on_not_registered(self) -> list[Action]:
        """The primary does not know us (it restarted): register again, keeping our data."""
        if self.status in (Status.CONNECTING, Status.DISCONNECTED):
            return []
        if self.status == Status.ERROR:
            return []
        self._note("primary_forgot_us", applied_lsn=self.applied_lsn)
        self._move(Status.CONNECTING)
        return self._register()

    # ---- stream ---------------------------------------------------------------------------

    def on_record(
        self, first_lsn: int, last_lsn: int, history_id: bytes, record: bytes
    ) -> list[Action]:
        """A live record from SUB (crc already checked by the adapter)."""
        self._last_heard_ms = self._last_stream_ms = self._now_ms
        if self.status not in (Status.SYNCING, Status.READY):
            return []  # joining or bootstrapping: WalSync fetches it later
        self._heard(last_lsn)
        return self._offer(first_lsn, last_lsn, history_id, record)

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

    # ---- driver feedback ------------------------------------------------------------------

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

    # ---- internals ------------------------------------------------------------------------

    def _offer(self, first: int, last: int, history: bytes, record: bytes) -> list[Action]:
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
            return [ApplyRecord(first, last, record)]
        if first <= self.applied_lsn:
            # Remote input, not our invariant: the primary's batch boundaries differ from ours
            # (a forged record, or a primary that lost an unsynced tail). Never apply it.
            self._note("straddling_record", first_lsn=first, last_lsn=last)
            return self._disconnect(f"record {first}..{last} straddles applied {self.applied_lsn}")
        return [] if self._pending else self._gap(first - 1)

    def _gap(self, seen_lsn: int) -> list[Action]:
        self.counters.gaps += 1
        self._note("gap_detected", applied_lsn=self.applied_lsn, seen_lsn=seen_lsn)
        if self.status == Status.READY:
            self._move(Status.SYNCING)
        return self._wal_sync()

    def _wal_sync(self) -> list[Action]:
        if self._pending:
            return []
        self.counters.catchups += 1
        self._request("wal_sync")
        return [SendWalSync(self.applied_lsn + 1, self.config.wal_sync_max_bytes)]

    def _refuse_upstream(self, reason: str, upstream_history: bytes, lsn: int) -> list[Action]:
        """Stay in ERROR, keep serving reads, and look again when the upstream's stream shows
        another history (``on_beacon``)."""
        self.error_message = reason
        self._refused_history = upstream_history
        self._retry_at_ms = 0
        self._note("primary_refused", primary_history=upstream_history.hex(), primary_lsn=lsn)
        self._move(Status.ERROR)
        return []

    def _begin_bootstrap(self, why: str) -> list[Action]:
        if not self.config.allow_bootstrap:
            self.error_message = f"a bootstrap is needed ({why}) but --no-bootstrap forbids it"
            self._pending = ""
            self._retry_at_ms = 0
            self._note("bootstrap_refused", reason=why, applied_lsn=self.applied_lsn)
            self._move(Status.ERROR)
            return []
        self.counters.bootstraps += 1
        self._note("bootstrap_start", reason=why, applied_lsn=self.applied_lsn)
        if self.status != Status.BOOTSTRAPPING:
            self._move(Status.BOOTSTRAPPING)
        credit = self.config.bootstrap_credit
        self._boot = BootstrapReceiver(credit)
        self._request("bootstrap")
        return [BeginBootstrap(), SendBootstrap(0, credit, self.config.bootstrap_chunk_bytes)]

    def _register(self) -> list[Action]:
        self._request("register")
        return [SendRegister(self.applied_lsn, self.history_id, self.chain)]

    def _request(self, kind: str) -> None:
        self._pending = kind
        self._pending_deadline_ms = self._now_ms + self.config.request_timeout_ms

    def _on_request_timeout(self) -> list[Action]:
        kind, self._pending = self._pending, ""
        self._note("request_timeout", request=kind)
        if kind in ("register", "bootstrap"):
            return self._disconnect(f"{kind} timed out")
        return [Reconnect(f"{kind} timed out"), *self._wal_sync()]

    def _disconnect(self, why: str) -> list[Action]:
        self._pending = ""
        if self.status != Status.DISCONNECTED:
            self._move(Status.DISCONNECTED)
            self._note("disconnected", reason=why)
        self._retry_at_ms = self._now_ms + self._backoff_ms
        self._backoff_ms = min(self._backoff_ms * 2, self.config.backoff_max_ms)
        return [Reconnect(why)]

    def _foreign_history(self) -> list[Action]:
        self._note("foreign_history", ours=self.history_id.hex())
        self._move(Status.CONNECTING)
        return [Reconnect("stream of another history"), *self._register()]

    def _heard(self, primary_lsn: int) -> None:
        self._last_heard_ms = self._now_ms
        if primary_lsn > self.primary_lsn:
            self.primary_lsn = primary_lsn

    def _maybe_heartbeat(self) -> list[Action]:
        if self._now_ms - self._last_heartbeat_ms < self.config.heartbeat_interval_ms:
            return []
        self._last_heartbeat_ms = self._now_ms
        return [self._heartbeat()]

    def _heartbeat(self) -> SendHeartbeat:
        return SendHeartbeat(
            self.status,
            self.applied_lsn,
            self.durable_lsn,
            self.bootstrap_progress,
            self.error_message,
        )

    def _move(self, to: Status) -> None:
        if (self.status, to) not in TRANSITIONS:
            raise InvariantError(f"illegal transition {self.status.name} -> {to.name}")
        if to == Status.ERROR:
            self._note("status", old=self.status.name, new=to.name, error=self.error_message)
        else:
            self._note("status", old=self.status.name, new=to.name)
        self.status = to
        self._last_heartbeat_ms = -(10**12)  # tell the primary at the next tick
        if to != Status.ERROR:
            self.error_message = ""

    def _note(self, event: str, **fields: object) -> None:
        self._events.append((event, fields))
