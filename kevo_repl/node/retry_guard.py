"""A primary's side of idempotent retries: the window, batches not yet committed, the rebuild.

The window (``core/retry_window.py``) holds committed batches. A retry can also arrive while
its original is still queued or syncing (the client gave up waiting, the primary did not
die): such a retry is attached to the original and answered with it, never queued again.
At start-up and at promotion the window is rebuilt from the ``client_writes`` of the WAL's
last ``REBUILD_LSNS`` LSNs (every node's WAL is the same bytes, so a promoted replica knows
what its old primary committed); its floor is where that scan began.
"""

from __future__ import annotations

import hashlib
from typing import Final

from kevo_repl.adapters.wal_log import SegmentedLog
from kevo_repl.core.record import decode_record
from kevo_repl.core.retry_window import (
    Remembered,
    RetryTooOldError,
    RetryWindow,
    SeqReusedError,
    client_name,
)
from kevo_repl.node.group_commit import CommittedWrite, PendingWrite
from kevo_repl.wire import pb
from kevo_repl.wire.batch import HISTORY_ID_BYTES, WireError, read_client_writes

__all__ = ["REBUILD_LSNS", "RetryGuard", "payload_hash", "rebuild_window"]

# How far back a restart looks: at most this many records are read (one LSN at least each),
# a bounded start-up cost; 262 batches of 1,000 entries, or 262,144 single writes.
REBUILD_LSNS: Final = 1 << 18
CLIENT_ID_BYTES: Final = HISTORY_ID_BYTES  # 16 random bytes, like a history id


def payload_hash(payload: bytes) -> bytes:
    """BLAKE2b-128 of a client payload: a retry must carry the very bytes it first sent."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def rebuild_window(log: SegmentedLog, last_lsn: int, horizon: int = REBUILD_LSNS) -> RetryWindow:
    """The window as the WAL's tail gives it: every client write of its last ``horizon``
    LSNs (or of what it retains). A prefix that cannot be read makes the window start after
    its record: the floor then refuses retries that could be in it, instead of doubling them.
    """
    start = max(log.retained_from_lsn, last_lsn - horizon + 1, 1)
    window = RetryWindow(floor_lsn=start - 1)
    if start > last_lsn:
        return window
    for record in log.read_from(start):
        decoded = decode_record(record)
        try:
            writes = read_client_writes(decoded.payload)
        except WireError:
            window = RetryWindow(floor_lsn=decoded.last_lsn)
            continue
        for w in writes:
            first = decoded.first_lsn + w.offset
            last = first + w.count - 1
            if len(w.client_id) != CLIENT_ID_BYTES or not w.count or last > decoded.last_lsn:
                window = RetryWindow(floor_lsn=decoded.last_lsn)
                break
            window.remember(w.client_id, w.seq, w.payload_hash, first, last)
    return window


class RetryGuard:
    """Decides, for each idempotent batch, whether to write it, answer it, or refuse it."""

    def __init__(self, window: RetryWindow) -> None:
        self.window = window
        self.pending: dict[tuple[bytes, int], PendingWrite] = {}  # accepted, not committed

    def check(self, body: pb.BatchRequest, digest: bytes) -> Remembered | PendingWrite | None:
        """The original answer (``Remembered``), the original still pending (attach the
        retry to it), or None: write it. Raises ``WireError`` for a bad id, a seq reused
        with other bytes (``ERROR_SEQ_REUSED``) or a retry the window may have forgotten
        (``ERROR_RETRY_TOO_OLD``)."""
        cid, seq = body.client_id, body.seq
        if len(cid) != CLIENT_ID_BYTES or seq < 1:
            raise WireError(
                f"batch: client_id must be {CLIENT_ID_BYTES} bytes and seq at least 1 "
                f"(got {len(cid)} bytes, seq {seq})"
            )
        original = self.pending.get((cid, seq))
        if original is not None:
            if original.payload_hash != digest:
                raise WireError(
                    f"batch {seq} of client {client_name(cid)} is being committed with other "
                    "contents; a seq names one batch only, so this one was not written",
                    pb.ERROR_SEQ_REUSED,
                )
            return original
        try:
            return self.window.lookup(cid, seq, digest, retry=body.retry, seen_lsn=body.seen_lsn)
        except SeqReusedError as exc:
            raise WireError(str(exc), pb.ERROR_SEQ_REUSED) from None
        except RetryTooOldError as exc:
            raise WireError(str(exc), pb.ERROR_RETRY_TOO_OLD) from None

    def accepted(self, write: PendingWrite) -> None:
        if write.client_id:
            self.pending[(write.client_id, write.seq)] = write

    def committed(self, done: list[CommittedWrite]) -> None:
        """Durable and applied, in LSN order: now the window answers their retries."""
        for c in done:
            w = c.write
            if w.client_id:
                self.pending.pop((w.client_id, w.seq), None)
                self.window.remember(w.client_id, w.seq, w.payload_hash, c.first_lsn, c.last_lsn)

    def dropped(self) -> None:
        """The WAL failed under the pending batches (the node stops): forget them."""
        self.pending.clear()
