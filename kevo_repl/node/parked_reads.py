"""Reads that wait for an LSN (read-your-writes), shared by primary and replica.

A ``Get`` with ``min_lsn`` above what the store has applied is parked, answered as soon as
the store reaches it, or refused with ``ERROR_TIMEOUT`` at its deadline: never a blocked loop.
What waits is bounded: keys are checked against the key limit before anything is kept, and
at most ``MAX_PARKED`` reads wait, ``MAX_PARKED_PER_PEER`` of them from one connection, so
parked reads hold at most ``MAX_PARKED * (max_key_bytes + ~100)`` bytes (about 6 MiB).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError

__all__ = ["MAX_PARKED", "MAX_PARKED_PER_PEER", "MAX_WAIT_MS", "ParkedReads"]

MAX_WAIT_MS = 60_000  # the longest a read or a write may wait for an LSN or replicas
MAX_PARKED = 10_000
MAX_PARKED_PER_PEER = 1_000


@dataclass(slots=True)
class _Parked:
    peer: bytes
    request_id: int
    key: bytes
    min_lsn: int
    deadline_ms: int


@dataclass(slots=True)
class ParkedReads:
    store: Callable[[], StateStore]  # a getter: a replica swaps its store after a bootstrap
    reply: Callable[[bytes, pb.Response], object]  # the serving side's budget-aware reply
    send_error: Callable[[bytes, int, pb.ErrorCode.ValueType, str], object]  # counted by code
    max_key_bytes: int
    _parked: list[_Parked] = field(default_factory=list)
    _per_peer: Counter[bytes] = field(default_factory=Counter)

    def get(self, peer: bytes, rid: int, req: pb.GetRequest, now_ms: int, at_lsn: int = 0) -> None:
        """Answer now, or park until ``min_lsn`` (and ``at_lsn``: the primary's last write to
        this key, acknowledged but not yet applied) is applied or the timeout passes."""
        key = req.key
        if not key:
            raise WireError("get: empty key")
        if len(key) > self.max_key_bytes:
            msg = f"get: key of {len(key)} bytes, over the limit of {self.max_key_bytes}"
            raise WireError(msg, pb.ERROR_TOO_LARGE)
        wanted = max(req.min_lsn, at_lsn)
        if wanted > self.store().applied_lsn:
            if len(self._parked) >= MAX_PARKED:
                raise WireError(f"{MAX_PARKED} reads already wait for LSNs", pb.ERROR_UNAVAILABLE)
            if self._per_peer[peer] >= MAX_PARKED_PER_PEER:
                msg = f"{MAX_PARKED_PER_PEER} reads of this connection already wait for LSNs"
                raise WireError(msg, pb.ERROR_UNAVAILABLE)
            timeout = min(req.timeout_ms or 1000, MAX_WAIT_MS)
            self._parked.append(_Parked(peer, rid, key, wanted, now_ms + timeout))
            self._per_peer[peer] += 1
            return
        self._answer(peer, rid, key)

    def release(self, now_ms: int) -> None:
        """Answer what the store now covers and expire what waited too long."""
        if not self._parked:
            return
        applied = self.store().applied_lsn
        keep: list[_Parked] = []
        for p in self._parked:
            if p.min_lsn <= applied:
                self._answer(p.peer, p.request_id, p.key)
            elif now_ms >= p.deadline_ms:
                msg = f"min_lsn {p.min_lsn} not reached in time (applied LSN is {applied})"
                self.send_error(p.peer, p.request_id, pb.ERROR_TIMEOUT, msg)
            else:
                keep.append(p)
                continue
            self._per_peer[p.peer] -= 1
            if not self._per_peer[p.peer]:
                del self._per_peer[p.peer]
        self._parked = keep

    def _answer(self, peer: bytes, rid: int, key: bytes) -> None:
        value, lsn = self.store().read(key)
        resp = pb.GetResponse(found=value is not None, value=value or b"", lsn=lsn)
        self.reply(peer, pb.Response(request_id=rid, get=resp))
