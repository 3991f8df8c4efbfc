"""The WAL's value types: its fsync policy, what an append returns, its counters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Appended", "FsyncPolicy", "WalStats"]


class FsyncPolicy(StrEnum):
    ALWAYS = "always"  # append returns after an fdatasync covers the record
    INTERVAL = "interval"  # a background thread syncs every fsync_interval_ms
    NONE = "none"  # only sync() and close() sync


@dataclass(frozen=True, slots=True)
class Appended:
    """A written batch: its LSN range and the exact stored record (publish it as-is)."""

    first_lsn: int
    last_lsn: int
    record: bytes


@dataclass(frozen=True, slots=True)
class WalStats:
    appends: int
    syncs: int  # fdatasync/fsync calls on segments (group commits and segment seals)
    rotations: int
    bytes_written: int  # record bytes
