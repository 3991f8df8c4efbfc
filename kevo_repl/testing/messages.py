"""The simulated protocol: one frozen dataclass per message of ``replication.proto``.

The simulator passes these objects instead of protobuf bytes: the wire codec has its own
tests, and what the simulation explores is the protocol logic. Field names follow the proto.
WAL records are real bytes (``encode_record``) so the follower handles opaque payloads as it
does in production, and the replica decodes what it was actually sent before applying it.
"""

from __future__ import annotations

import marshal
from dataclasses import dataclass, field
from enum import Enum

from kevo_repl.core.follower_types import Status
from kevo_repl.core.history import HistoryChain

__all__ = [
    "Ack",
    "Batch",
    "Beacon",
    "Bootstrap",
    "BootstrapChunk",
    "Entry",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "HeartbeatReply",
    "Record",
    "Register",
    "RegisterReply",
    "Reply",
    "Request",
    "Rewind",
    "RewindReply",
    "StreamMessage",
    "TooOld",
    "WalSync",
    "WalSyncReply",
    "apply_entries",
    "decode_record",
    "encode_record",
]

Entry = tuple[int, bytes, bytes]
"""(op, key, value): op 1 is a put, 2 a delete (value empty), as ``kevo_repl.v1.Op``."""


def encode_record(
    first_lsn: int, last_lsn: int, history_id: bytes, entries: tuple[Entry, ...]
) -> bytes:
    """A self-describing record: what the replica applies comes from these bytes only."""
    return marshal.dumps((first_lsn, last_lsn, history_id, entries))


def decode_record(record: bytes) -> tuple[int, int, bytes, tuple[Entry, ...]]:
    first, last, history, entries = marshal.loads(record)
    return first, last, history, tuple(entries)


@dataclass(frozen=True, slots=True)
class Batch:
    """One WAL record: its LSN range, the history that wrote it, its entries and bytes."""

    first_lsn: int
    last_lsn: int
    history_id: bytes
    entries: tuple[Entry, ...]
    record: bytes


def apply_entries(state: dict[bytes, bytes], entries: tuple[Entry, ...]) -> None:
    for op, key, value in entries:
        if op == 1:
            state[key] = value
        else:
            state.pop(key, None)


class ErrorCode(Enum):
    NOT_REGISTERED = "NOT_REGISTERED"
    DUPLICATE_REPLICA = "DUPLICATE_REPLICA"
    CREDIT = "CREDIT"
    BAD_REQUEST = "BAD_REQUEST"


# ---- stream (PUB -> SUB) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    first_lsn: int
    last_lsn: int
    history_id: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class Beacon:
    history_id: bytes
    last_lsn: int


StreamMessage = Record | Beacon

# ---- requests (DEALER -> ROUTER) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    replica_id: str
    address: str
    history_id: bytes
    applied_lsn: int
    chain: HistoryChain = field(default_factory=HistoryChain)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    replica_id: str
    status: Status
    applied_lsn: int
    durable_lsn: int
    bootstrap_progress: float
    error_message: str


@dataclass(frozen=True, slots=True)
class Ack:
    replica_id: str
    applied_lsn: int
    durable_lsn: int


@dataclass(frozen=True, slots=True)
class WalSync:
    from_lsn: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Bootstrap:
    session_id: int
    credit: int
    chunk_bytes: int


@dataclass(frozen=True, slots=True)
class Rewind:
    keys: list[bytes]


Request = Register | Heartbeat | Ack | WalSync | Bootstrap | Rewind

# ---- replies (ROUTER -> DEALER) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterReply:
    primary_lsn: int
    retained_from_lsn: int
    history_id: bytes
    bootstrap_required: bool
    chain: HistoryChain = field(default_factory=HistoryChain)
    upstream_is_primary: bool = True


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    primary_lsn: int


@dataclass(frozen=True, slots=True)
class WalSyncReply:
    records: tuple[Record, ...]
    primary_lsn: int


@dataclass(frozen=True, slots=True)
class TooOld:
    retained_from_lsn: int


@dataclass(frozen=True, slots=True)
class BootstrapChunk:
    session_id: int
    seq: int
    keys: list[bytes]
    values: list[bytes]
    progress: float
    is_last: bool
    snapshot_lsn: int
    history_id: bytes


@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class RewindReply:
    snapshot_lsn: int
    keys: list[bytes]
    values: list[bytes]
    found: list[bool]


Reply = (
    RegisterReply
    | HeartbeatReply
    | WalSyncReply
    | TooOld
    | BootstrapChunk
    | ErrorReply
    | RewindReply
)
