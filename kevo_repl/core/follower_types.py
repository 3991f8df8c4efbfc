"""The follower's vocabulary: statuses, the transition table, config and actions.

Split from ``follower.py`` so drivers, the simulator and docs can name these without the
state machine itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from kevo_repl.core.history import HistoryChain

__all__ = [
    "TRANSITIONS",
    "Action",
    "ApplyRecord",
    "BeginBootstrap",
    "DiscardTail",
    "FollowerConfig",
    "InstallBootstrap",
    "InvariantError",
    "Reconnect",
    "RewindStore",
    "SaveChain",
    "SendAck",
    "SendBootstrap",
    "SendHeartbeat",
    "SendRegister",
    "SendRewind",
    "SendWalSync",
    "Status",
    "WriteChunk",
]


class Status(Enum):
    """Replica statuses; the values are the protobuf ReplicaStatus numbers."""

    CONNECTING = 1
    SYNCING = 2
    BOOTSTRAPPING = 3
    READY = 4
    DISCONNECTED = 5
    ERROR = 6


class InvariantError(Exception):
    """The state machine was asked to do something its invariants forbid: stop loudly."""


S = Status
# (from, to) -> why. The only status changes the follower makes; docs/protocol.md mirrors it.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (S.CONNECTING, S.BOOTSTRAPPING): "registered; history differs or WAL no longer covers us",
    (S.CONNECTING, S.SYNCING): "registered; behind the primary",
    (S.CONNECTING, S.READY): "registered; already at the primary's LSN",
    (S.CONNECTING, S.ERROR): "the primary's history is unrelated or behind ours, or a needed "
    "bootstrap is not allowed",
    (S.CONNECTING, S.DISCONNECTED): "no reply to Register in time",
    (S.BOOTSTRAPPING, S.SYNCING): "snapshot installed; catching up from snapshot_lsn + 1",
    (S.BOOTSTRAPPING, S.DISCONNECTED): "primary silent or bootstrap stream broken",
    (S.BOOTSTRAPPING, S.ERROR): "local storage failed",
    (S.SYNCING, S.READY): "applied LSN reached the primary's",
    (S.SYNCING, S.BOOTSTRAPPING): "WalSync answered TooOld",
    (S.SYNCING, S.DISCONNECTED): "primary silent",
    (S.SYNCING, S.ERROR): "local storage failed, or a needed bootstrap is not allowed",
    (S.READY, S.SYNCING): "gap in the stream",
    (S.READY, S.DISCONNECTED): "primary silent",
    (S.READY, S.ERROR): "local storage failed",
    (S.DISCONNECTED, S.CONNECTING): "backoff expired: register again",
    (S.BOOTSTRAPPING, S.CONNECTING): "primary no longer knows us: register again",
    (S.SYNCING, S.CONNECTING): "stream of another history, or primary forgot us: register again",
    (S.READY, S.CONNECTING): "stream of another history, or primary forgot us: register again",
    (S.DISCONNECTED, S.ERROR): "local storage failed",
    (S.ERROR, S.CONNECTING): "retry after a recoverable local error, or the primary's "
    "history changed",
}


@dataclass(frozen=True, slots=True)
class FollowerConfig:
    """Timers (milliseconds) and limits. Defaults suit a LAN; tests shorten them."""

    replica_id: str
    address: str = ""
    heartbeat_interval_ms: int = 500
    primary_timeout_ms: int = 3000
    request_timeout_ms: int = 2000
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 5000
    wal_sync_max_bytes: int = 4 * 1024 * 1024
    bootstrap_credit: int = 8
    bootstrap_chunk_bytes: int = 256 * 1024
    allow_bootstrap: bool = True
    # Replace our data with an unrelated primary's (or one behind us): --reinit. Off, a
    # replica holding data refuses such a primary: it may be a wiped or wrong one, and
    # following it would erase what may be the only good copy.
    allow_unrelated_history: bool = False


# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRegister:
    applied_lsn: int
    history_id: bytes
    chain: HistoryChain = field(default_factory=HistoryChain)


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    status: Status
    applied_lsn: int
    durable_lsn: int
    bootstrap_progress: float
    error_message: str


@dataclass(frozen=True, slots=True)
class SendAck:
    applied_lsn: int
    durable_lsn: int


@dataclass(frozen=True, slots=True)
class SendWalSync:
    from_lsn: int
    max_bytes: int
    to_lsn: int = 0  # the last LSN needed (the stream brought what follows); 0: no bound


@dataclass(frozen=True, slots=True)
class SendBootstrap:
    session_id: int  # 0 starts a new session
    credit: int
    chunk_bytes: int


@dataclass(frozen=True, slots=True)
class ApplyRecord:
    """Apply this record to the store; the driver then calls ``Follower.applied``."""

    first_lsn: int
    last_lsn: int
    record: bytes


@dataclass(frozen=True, slots=True)
class SendRewind:
    """Ask the upstream for the current values of these keys (a diverged tail's)."""

    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class RewindStore:
    """In one transaction: set these keys (None: delete) and the applied LSN back to
    ``lsn`` of ``history_id``; then start the WAL afresh after ``lsn``. ``consistent_at`` is
    saved first: a restart before it is reached must not serve the mixed state."""

    lsn: int
    history_id: bytes
    puts: list[tuple[bytes, bytes | None]]
    consistent_at: int = 0  # not a state of the history (never served) until applied here


@dataclass(frozen=True, slots=True)
class SaveChain:
    """Store this history chain as ours before anything of its newer histories is written."""

    chain: HistoryChain


@dataclass(frozen=True, slots=True)
class DiscardTail:
    """Our records past ``after_lsn`` (up to ``applied_lsn``) are on another branch: cut the
    log back to ``after_lsn`` and keep what was cut in a file for the operator."""

    after_lsn: int
    applied_lsn: int


@dataclass(frozen=True, slots=True)
class BeginBootstrap:
    """Discard any unfinished bootstrap and start a fresh store beside the live one."""


@dataclass(frozen=True, slots=True)
class WriteChunk:
    keys: list[bytes]
    values: list[bytes]


@dataclass(frozen=True, slots=True)
class InstallBootstrap:
    """Swap the finished bootstrap store in atomically at ``snapshot_lsn``."""

    snapshot_lsn: int
    history_id: bytes


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Drop the request socket (and whatever it had in flight) and open a new one."""

    reason: str


Action = (
    SendRegister
    | SendHeartbeat
    | SendAck
    | SendWalSync
    | SendBootstrap
    | ApplyRecord
    | BeginBootstrap
    | DiscardTail
    | SaveChain
    | SendRewind
    | RewindStore
    | WriteChunk
    | InstallBootstrap
    | Reconnect
)
