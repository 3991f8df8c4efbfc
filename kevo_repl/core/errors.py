"""Typed exceptions. Expected conditions are exceptions of ours, never raw library errors.

Adapters turn ``zmq.ZMQError``, ``lmdb.Error`` and ``OSError`` into ``TransportError`` /
``StorageError`` so callers handle one vocabulary.
"""

from __future__ import annotations

__all__ = [
    "BadRecordError",
    "CorruptRecordError",
    "HistoryMismatchError",
    "KevoError",
    "LsnGapError",
    "ProtocolError",
    "StorageError",
    "TooOldError",
    "TornRecordError",
    "TransportError",
    "UnreachableError",
    "UsageError",
]


class KevoError(Exception):
    """Base of every error this package raises on purpose."""


class UnreachableError(KevoError):
    """A peer (a node, etcd) did not answer in time: the CLI exits 3 for any of them."""


class UsageError(KevoError):
    """The command line asks for something impossible that only the node's answer showed
    (e.g. ``tail --until-lsn`` below where the tail starts): exit 2, as bad arguments."""


class StorageError(KevoError):
    """The local disk or store failed (IO error, full disk, unusable file)."""


class TransportError(KevoError):
    """A socket failed or a peer could not be reached."""


class ProtocolError(KevoError):
    """A peer sent something malformed or out of protocol."""


class TornRecordError(KevoError):
    """A record ends before its declared length: a crash mid-write, normal at the tail."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"torn record at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class CorruptRecordError(StorageError):
    """A complete record fails its checksum or layout checks: never skipped silently."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt WAL record in {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LsnGapError(KevoError):
    """A batch does not start right after the last applied LSN."""

    def __init__(self, expected_lsn: int, got_lsn: int) -> None:
        super().__init__(f"LSN gap: expected batch starting at {expected_lsn}, got {got_lsn}")
        self.expected_lsn = expected_lsn
        self.got_lsn = got_lsn


class HistoryMismatchError(KevoError):
    """Data of another history (another primary data directory) was offered."""


class BadRecordError(KevoError):
    """A complete WAL record fails its layout or checksum checks (core codec level).

    The file adapter turns it into ``CorruptRecordError`` naming the file; a replica turns
    it into ``ProtocolError``.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"bad record at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class TooOldError(KevoError):
    """The requested LSN is no longer retained by the WAL: the reader must bootstrap."""

    def __init__(self, requested_lsn: int, retained_from_lsn: int) -> None:
        super().__init__(
            f"LSN {requested_lsn} is no longer retained (oldest is {retained_from_lsn})"
        )
        self.requested_lsn = requested_lsn
        self.retained_from_lsn = retained_from_lsn
