"""Digest requests computed on a helper thread, shared by primary and replica.

A digest reads the whole store (about a second per million keys). On the loop thread three
pipelined Digests froze writes and beacons past the followers' timeout; here the loop only
queues the request and sends the answer when the helper thread has it. The store is read
through one consistent snapshot (``StateStore.digest``), so the answer names the LSN it
reflects. At most ``MAX_QUEUED`` digests wait (one per peer), so a peer cannot queue work
without bound; the pages the scan touched are released from the node's RSS afterwards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kevo_repl.adapters.state_lmdb import StateStore, StoreDigest
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError

__all__ = ["MAX_QUEUED", "DigestQueue"]

MAX_QUEUED = 4


@dataclass(slots=True)
class _Job:
    peer: bytes
    request_id: int
    result: Future[StoreDigest]


def _digest(store: StateStore) -> StoreDigest:
    try:
        return store.digest()
    finally:
        store.release_pages()


@dataclass(slots=True)
class DigestQueue:
    store: Callable[[], StateStore]  # a getter: a replica swaps its store after a bootstrap
    _jobs: deque[_Job] = field(default_factory=deque)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="digest")
    )

    def submit(self, peer: bytes, request_id: int) -> None:
        """Queue a digest for ``peer``; ``WireError`` when too many are queued."""
        if any(j.peer == peer for j in self._jobs):
            raise WireError("a digest for this connection is already being computed")
        if len(self._jobs) >= MAX_QUEUED:
            raise WireError(f"{MAX_QUEUED} digests already queued; retry", pb.ERROR_UNAVAILABLE)
        self._jobs.append(_Job(peer, request_id, self._pool.submit(_digest, self.store())))

    def ready(self) -> list[tuple[bytes, pb.Response]]:
        """Answers (peer, response) of the digests finished so far, in request order."""
        out: list[tuple[bytes, pb.Response]] = []
        while self._jobs and self._jobs[0].result.done():
            job = self._jobs.popleft()
            try:
                d = job.result.result()
            except KevoError as exc:
                error = pb.Error(code=pb.ERROR_UNAVAILABLE, message=f"digest failed: {exc}")
                out.append((job.peer, pb.Response(request_id=job.request_id, error=error)))
                continue
            body = pb.DigestResponse(lsn=d.lsn, keys=d.keys, digest=bytes.fromhex(d.sha256))
            out.append((job.peer, pb.Response(request_id=job.request_id, digest=body)))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
