"""The follower's state and the helpers every part of it uses (``core/follower.py``).

Split from the follower so the state machine reads in three parts: this state, copying
data wholesale (``follower_copy.py``: bootstrap, rewind), and following (``follower.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kevo_repl.core.bootstrap_receiver import BootstrapReceiver
from kevo_repl.core.follower_types import (
    TRANSITIONS,
    Action,
    FollowerConfig,
    InvariantError,
    Reconnect,
    SaveChain,
    SendHeartbeat,
    SendRegister,
    SendWalSync,
    Status,
)
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.rewind import RewindReceiver
from kevo_repl.core.stream_ahead import StreamAhead

__all__ = ["FollowerCore"]


@dataclass(slots=True)
class _Counters:
    bootstraps: int = 0
    catchups: int = 0
    gaps: int = 0
    dropped_duplicates: int = 0
    foreign_records: int = 0
    rewinds: int = 0


@dataclass(slots=True)
class FollowerCore:
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
    _pending: str = ""  # the one request in flight: register, wal_sync, bootstrap, rewind
    _pending_deadline_ms: int = 0
    _ack_due: bool = False
    _boot: BootstrapReceiver = field(default_factory=lambda: BootstrapReceiver(credit=0))
    _started: bool = False
    _refused_history: bytes = b""  # the primary history we refused to follow (ERROR)
    _chain_before_install: HistoryChain = field(default_factory=HistoryChain)
    _rewind: RewindReceiver | None = None  # a diverged tail being rewound
    serve_from_lsn: int = 0  # consistent (servable) only once applied past it (a rewind)
    _ahead: StreamAhead = field(default_factory=StreamAhead)  # stream records past a gap
    _stream_records: int = 0  # records the stream brought while following
    _stream_records_at_sync: int = 0  # ... when the last WalSync was sent

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

    def _adopt(self, chain: HistoryChain) -> list[Action]:
        if chain == self.chain:
            return []
        self.chain = chain
        return [SaveChain(chain)]

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
        self._stream_records_at_sync = self._stream_records
        to_lsn = self._ahead.end_of_gap(self.applied_lsn)  # the stream brought what follows
        return [SendWalSync(self.applied_lsn + 1, self.config.wal_sync_max_bytes, to_lsn)]

    def _refuse_upstream(self, reason: str, upstream_history: bytes, lsn: int) -> list[Action]:
        """Stay in ERROR, keep serving reads, and look again when the upstream's stream shows
        another history (``on_beacon``)."""
        self.error_message = reason
        self._refused_history = upstream_history
        self._retry_at_ms = 0
        self._note("primary_refused", primary_history=upstream_history.hex(), primary_lsn=lsn)
        self._move(Status.ERROR)
        return []

    def _register(self) -> list[Action]:
        self._request("register")
        return [SendRegister(self.applied_lsn, self.history_id, self.chain)]

    def _request(self, kind: str) -> None:
        self._pending = kind
        self._pending_deadline_ms = self._now_ms + self.config.request_timeout_ms

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

    @property
    def reported_durable_lsn(self) -> int:
        """What we tell the upstream is durable here: nothing while our store is no state of
        the history (mid-rewind). Its writes waiting for replicas count only nodes that could
        be promoted with them; a rewound node cannot be until it is consistent again."""
        return self.durable_lsn if self.consistent else 0

    def _heartbeat(self) -> SendHeartbeat:
        return SendHeartbeat(
            self.status,
            self.applied_lsn,
            self.reported_durable_lsn,
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
        if to not in (Status.SYNCING, Status.READY):
            self._ahead.clear()  # a new join, a copy or an error: nothing held applies
        self._last_heartbeat_ms = -(10**12)  # tell the primary at the next tick
        if to != Status.ERROR:
            self.error_message = ""

    def _note(self, event: str, **fields: object) -> None:
        self._events.append((event, fields))

    @property
    def consistent(self) -> bool:
        """The store is a state of the upstream's history (not mid-copy or mid-rewind)."""
        return (
            self.status != Status.BOOTSTRAPPING
            and self._rewind is None
            and self.applied_lsn >= self.serve_from_lsn
        )
