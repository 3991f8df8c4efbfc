"""Reads that wait for an LSN (read-your-writes), shared by primary and replica.

A ``Get`` with ``min_lsn`` above what the store has applied is parked, answered as soon as
the store reaches it, or refused with ``ERROR_TIMEOUT`` at its deadline: never a blocked loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError
from kevo_repl.wire.envelope import error_response

__all__ = ["MAX_WAIT_MS", "ParkedReads"]

MAX_WAIT_MS = 60_000  # the longest a read or a write may wait for an LSN or replicas
MAX_PARKED = 10_000  # a peer cannot grow this list without bound


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
    send: Callable[[bytes, bytes], object]
    _parked: list[_Parked] = field(default_factory=list)

    def get(self, peer: bytes, rid: int, req: pb.GetRequest, now_ms: int) -> None:
        """Answer now, or park until ``min_lsn`` is applied or the timeout passes."""
        if not req.key:
            raise WireError("get: empty key")
        if req.min_lsn > self.store().applied_lsn:
            if len(self._parked) >= MAX_PARKED:
                raise WireError(f"{MAX_PARKED} reads already wait for LSNs", pb.ERROR_UNAVAILABLE)
            timeout = min(req.timeout_ms or 1000, MAX_WAIT_MS)
            self._parked.append(_Parked(peer, rid, req.key, req.min_lsn, now_ms + timeout))
            return
        self._answer(peer, rid, req.key)

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
                self.send(p.peer, error_response(p.request_id, pb.ERROR_TIMEOUT, msg))
            else:
                keep.append(p)
        self._parked = keep

    def _answer(self, peer: bytes, rid: int, key: bytes) -> None:
        value, lsn = self.store().read(key)
        resp = pb.GetResponse(found=value is not None, value=value or b"", lsn=lsn)
        self.send(peer, pb.Response(request_id=rid, get=resp).SerializeToString())
