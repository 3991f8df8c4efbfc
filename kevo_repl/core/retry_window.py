"""The primary's idempotent retry window: which client batches it remembers, and how long.

A client that lost an answer resends its batch with the same (client id, seq); a batch still
remembered is answered with the LSNs it got the first time, and nothing is written. Memory
is bounded: per client its last ``per_client`` committed batches, and at most ``max_clients``
clients (the one whose last commit is oldest is forgotten first); 64 x 1024 by default, so at
most 65,536 batches of about 220 bytes each (14 MB).

What is forgotten is kept as an LSN floor, per client and for clients not remembered at all
(a restart rebuilds the window from the WAL's tail: the floor is where that tail begins). A
retry carries ``seen_lsn``, an LSN the client saw before it first sent the batch, so the batch
can only have committed above it: a retry not remembered, with ``seen_lsn`` below the floor,
may have committed where the window no longer looks, and is refused (``RetryTooOldError``)
rather than written twice. A retry above the floor that is not remembered never committed
(it was lost with a crash, or refused), so it is written. A seq remembered with another
payload hash is refused (``SeqReusedError``): its answer would belong to other data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from kevo_repl.core.errors import KevoError

__all__ = [
    "MAX_CLIENTS",
    "PER_CLIENT",
    "Remembered",
    "RetryTooOldError",
    "RetryWindow",
    "SeqReusedError",
]

PER_CLIENT: Final = 64  # a load keeps 16 batches in flight: four times that
MAX_CLIENTS: Final = 1024


class RetryTooOldError(KevoError):
    """A retried batch the window may have forgotten: not written again, outcome unknown."""


class SeqReusedError(KevoError):
    """A (client id, seq) already committed with another payload: nothing written."""


@dataclass(frozen=True, slots=True)
class Remembered:
    """A committed batch as the window holds it: its original answer and what it carried."""

    first_lsn: int
    last_lsn: int
    payload_hash: bytes


@dataclass(slots=True)
class _Client:
    floor_lsn: int  # this client's batches at or below it may be forgotten
    seqs: dict[int, Remembered] = field(default_factory=dict)  # in commit order


def client_name(client_id: bytes) -> str:
    """How messages name a client: the first 8 hex digits of its id are enough to tell."""
    return client_id.hex()[:8]


class RetryWindow:
    """Committed idempotent batches by (client id, seq); fed in LSN order."""

    def __init__(
        self, *, per_client: int = PER_CLIENT, max_clients: int = MAX_CLIENTS, floor_lsn: int = 0
    ) -> None:
        if per_client < 1 or max_clients < 1:
            raise ValueError("a retry window remembers at least one batch of one client")
        self.per_client = per_client
        self.max_clients = max_clients
        self.floor_lsn = floor_lsn  # for clients not remembered
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()  # oldest last commit first
        self.batches = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    def lookup(
        self, client_id: bytes, seq: int, payload_hash: bytes, *, retry: bool, seen_lsn: int
    ) -> Remembered | None:
        """The batch's original answer if remembered; None when it is to be written.

        Raises ``SeqReusedError`` for a remembered seq with another payload hash, and
        ``RetryTooOldError`` for a retry that may have committed below the floor.
        """
        client = self._clients.get(client_id)
        hit = client.seqs.get(seq) if client is not None else None
        if hit is not None:
            if hit.payload_hash != payload_hash:
                raise SeqReusedError(
                    f"batch {seq} of client {client_name(client_id)} was committed at LSN "
                    f"{hit.first_lsn}-{hit.last_lsn} with other contents; a seq names one "
                    "batch only, so this one was not written"
                )
            return hit
        floor = client.floor_lsn if client is not None else self.floor_lsn
        if retry and seen_lsn < floor:
            raise RetryTooOldError(
                f"retry of batch {seq} of client {client_name(client_id)} is older than the "
                f"idempotent retry window: it was first sent after LSN {seen_lsn} and the "
                f"window no longer covers LSNs up to {floor}, so it may have been committed; "
                "it was not written again (read its keys back to see)"
            )
        return None

    def remember(
        self, client_id: bytes, seq: int, payload_hash: bytes, first_lsn: int, last_lsn: int
    ) -> None:
        """A batch committed at ``first_lsn..last_lsn`` (called in LSN order)."""
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(self.floor_lsn)
            if len(self._clients) > self.max_clients:
                _, gone = self._clients.popitem(last=False)
                self.batches -= len(gone.seqs)
                self.floor_lsn = max(
                    self.floor_lsn, gone.floor_lsn, *(r.last_lsn for r in gone.seqs.values())
                )
        else:
            self._clients.move_to_end(client_id)
        if seq not in client.seqs:
            self.batches += 1
        client.seqs[seq] = Remembered(first_lsn, last_lsn, payload_hash)
        if len(client.seqs) > self.per_client:
            oldest = next(iter(client.seqs))
            old = client.seqs.pop(oldest)
            self.batches -= 1
            client.floor_lsn = max(client.floor_lsn, old.last_lsn)
