"""The primary's view of its replicas: progress, lag, liveness, retention floor, waiters.

Pure bookkeeping driven by the primary's driver loop (``note_commit`` after each commit,
``register`` / ``heartbeat`` / ``ack`` as requests arrive, ``tick`` on a timer). Lag in
milliseconds is measured here, on the primary, as the age of the oldest commit a replica has
not applied, so replica clocks never matter.

Identity: a replica id is held by one peer (ROUTER routing id) at a time. A Register for an id
already held by another live peer is refused as a duplicate unless it comes from the same
address (the same replica reconnecting with a new socket after a restart or a reconnect).

What a peer claims is checked, not believed: an applied LSN above what the primary committed,
or a durable LSN above the applied one, is refused (``ImpossiblePositionError``), so a forged
Ack can neither release a write that waits for replicas nor show a replica as caught up.
Writes waiting for replicas are kept per requested count in LSN order (commits come in
order), so an ack releases them in O(released), and their number is capped
(``max_waiters``). The number of known replicas is capped too (``max_replicas``).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field

from kevo_repl.core.follower_types import Status

__all__ = [
    "DuplicateReplicaError",
    "ImpossiblePositionError",
    "Registry",
    "RegistryFullError",
    "ReplicaState",
    "WaitResult",
]


class DuplicateReplicaError(Exception):
    """Another live peer holds this replica id."""


class RegistryFullError(Exception):
    """``max_replicas`` replicas are known already."""


class ImpossiblePositionError(Exception):
    """A replica claimed a position the primary never gave it (a forged or broken peer)."""


@dataclass(slots=True)
class ReplicaState:
    replica_id: str
    peer: bytes
    address: str
    role: int
    status: Status = Status.CONNECTING
    applied_lsn: int = 0
    durable_lsn: int = 0
    last_seen_ms: int = 0
    error_message: str = ""
    bootstrap_progress: float = 0.0
    bootstrap_snapshot_lsn: int = 0  # pins the WAL from here while a bootstrap runs
    bootstraps: int = 0
    catchups: int = 0


@dataclass(frozen=True, slots=True)
class WaitResult:
    token: object
    replicas_applied: int
    timed_out: bool


@dataclass(slots=True)
class _Waiter:
    token: object
    lsn: int
    replicas: int
    deadline_ms: int
    done: bool = False


_COUNTED = (Status.SYNCING, Status.READY)


def _holds(r: ReplicaState) -> int:
    """What a replica has applied *and* on disk: a write it holds survives its crash, so it
    survives a failover to it (PostgreSQL's synchronous_commit = on counts the flush)."""
    return min(r.applied_lsn, r.durable_lsn)


@dataclass(slots=True)
class Registry:
    """Per-replica progress. All times are milliseconds from the driver's monotonic clock."""

    stale_after_ms: int = 1500
    forget_after_ms: int = 3_600_000
    commit_history_max: int = 200_000
    max_replicas: int = 1024
    max_waiters: int = 100_000
    primary_lsn: int = 0
    _by_peer: dict[bytes, ReplicaState] = field(default_factory=dict)
    _by_id: dict[str, ReplicaState] = field(default_factory=dict)
    _commit_lsns: list[int] = field(default_factory=list)
    _commit_ms: list[int] = field(default_factory=list)
    _waiting: dict[int, deque[_Waiter]] = field(default_factory=dict)  # by replica count
    _deadlines: list[tuple[int, int, _Waiter]] = field(default_factory=list)  # a heap
    _waiter_seq: int = 0
    waiters: int = 0  # writes parked until enough replicas apply them

    # ---- commits and lag -------------------------------------------------------------------

    def note_commit(self, last_lsn: int, now_ms: int) -> None:
        """Remember when each batch committed: the basis of lag in ms."""
        self.primary_lsn = last_lsn
        self._commit_lsns.append(last_lsn)
        self._commit_ms.append(now_ms)
        if len(self._commit_lsns) > self.commit_history_max:
            self._trim(len(self._commit_lsns) - self.commit_history_max // 2)

    def lag_entries(self, replica: ReplicaState) -> int:
        return max(0, self.primary_lsn - replica.applied_lsn)

    def lag_ms(self, replica: ReplicaState, now_ms: int) -> int:
        """Age of the oldest commit the replica has not applied (0 when caught up)."""
        if replica.applied_lsn >= self.primary_lsn or not self._commit_lsns:
            return 0
        i = bisect.bisect_right(self._commit_lsns, replica.applied_lsn)
        i = min(i, len(self._commit_ms) - 1)
        return max(0, now_ms - self._commit_ms[i])

    # ---- requests --------------------------------------------------------------------------

    def register(
        self,
        replica_id: str,
        peer: bytes,
        address: str,
        role: int,
        applied_lsn: int,
        now_ms: int,
    ) -> ReplicaState:
        old = self._by_id.get(replica_id)
        if old is None and peer not in self._by_peer and len(self._by_id) >= self.max_replicas:
            raise RegistryFullError(f"{self.max_replicas} replicas are registered already")
        if old is not None and old.peer != peer:
            live = now_ms - old.last_seen_ms <= self.stale_after_ms
            if live and old.address != address:
                raise DuplicateReplicaError(
                    f"replica id {replica_id!r} is held by a live replica at {old.address}"
                )
            self._by_peer.pop(old.peer, None)
        prev = self._by_peer.get(peer)
        if prev is not None and prev.replica_id != replica_id:
            self._by_id.pop(prev.replica_id, None)
        state = ReplicaState(
            replica_id=replica_id,
            peer=peer,
            address=address,
            role=role,
            applied_lsn=applied_lsn,
            last_seen_ms=now_ms,
        )
        if old is not None:
            state.bootstraps, state.catchups = old.bootstraps, old.catchups
        self._by_id[replica_id] = state
        self._by_peer[peer] = state
        return state

    def get(self, peer: bytes) -> ReplicaState | None:
        return self._by_peer.get(peer)

    def heartbeat(
        self,
        peer: bytes,
        status: Status,
        applied_lsn: int,
        durable_lsn: int,
        bootstrap_progress: float,
        error_message: str,
        now_ms: int,
    ) -> tuple[ReplicaState | None, list[WaitResult]]:
        """Record a heartbeat; None when the peer never registered (it must register).

        Raises ``ImpossiblePositionError`` (changing nothing) when a following replica
        (SYNCING or READY) claims more than the primary committed; a joining one reports its
        old store's position, which may be of another history, so only its status counts.
        """
        r = self._by_peer.get(peer)
        if r is None:
            return None, []
        if status in _COUNTED:
            self._check_position(applied_lsn, durable_lsn)
        r.status = status
        r.bootstrap_progress = bootstrap_progress
        r.error_message = error_message
        if status != Status.BOOTSTRAPPING:
            r.bootstrap_snapshot_lsn = 0
        return r, self._advance(r, applied_lsn, durable_lsn, now_ms)

    def ack(
        self, peer: bytes, applied_lsn: int, durable_lsn: int, now_ms: int
    ) -> tuple[ReplicaState | None, list[WaitResult]]:
        r = self._by_peer.get(peer)
        if r is None:
            return None, []
        self._check_position(applied_lsn, durable_lsn)
        if r.status in (Status.DISCONNECTED, Status.CONNECTING):
            r.status = Status.SYNCING if applied_lsn < self.primary_lsn else Status.READY
        return r, self._advance(r, applied_lsn, durable_lsn, now_ms)

    def note_catchup(self, peer: bytes, now_ms: int) -> None:
        r = self._by_peer.get(peer)
        if r is not None:
            r.catchups += 1
            r.last_seen_ms = now_ms

    def note_bootstrap(self, peer: bytes, snapshot_lsn: int, now_ms: int) -> None:
        r = self._by_peer.get(peer)
        if r is not None:
            r.bootstraps += 1
            r.status = Status.BOOTSTRAPPING
            r.bootstrap_snapshot_lsn = snapshot_lsn
            r.last_seen_ms = now_ms

    def seen(self, peer: bytes, now_ms: int) -> None:
        r = self._by_peer.get(peer)
        if r is not None:
            r.last_seen_ms = now_ms

    # ---- waiting for replicas ----------------------------------------------------------------

    def connected(self) -> int:
        """Followers that can confirm writes now (syncing or ready)."""
        return sum(1 for r in self._by_id.values() if r.status in _COUNTED)

    def forget(self, replica_id: str, now_ms: int) -> ReplicaState:
        """Drop a departed follower (its hold on the WAL goes with it). A live one is
        refused: it would only register again at its next heartbeat."""
        r = self._by_id.get(replica_id)
        if r is None:
            known = ", ".join(sorted(self._by_id)) or "none"
            raise KeyError(f"no follower {replica_id!r} is known (known: {known})")
        silent = now_ms - r.last_seen_ms
        if silent <= self.stale_after_ms:
            raise ValueError(
                f"{replica_id} is connected (heard {silent} ms ago): stop it first, or it "
                "registers again at its next heartbeat"
            )
        self._by_id.pop(replica_id)
        self._by_peer.pop(r.peer, None)
        return r

    def replicas_applied(self, lsn: int) -> int:
        """Live replicas following this history (SYNCING or READY) that have ``lsn`` applied
        and durable.

        A CONNECTING or BOOTSTRAPPING replica reports its old store's LSN, which may belong
        to another history until its snapshot is installed, so it does not count.
        """
        return sum(1 for r in self._by_id.values() if _holds(r) >= lsn and r.status in _COUNTED)

    def wait_for(
        self, token: object, lsn: int, replicas: int, deadline_ms: int
    ) -> WaitResult | None:
        """Park a write until ``replicas`` have applied ``lsn``; None means it is parked.

        Writes are parked in commit order, so each count's queue stays sorted by LSN. The
        caller checks ``waiters`` against ``max_waiters`` before it commits the write.
        """
        count = self.replicas_applied(lsn)
        if count >= replicas:
            return WaitResult(token, count, timed_out=False)
        waiter = _Waiter(token, lsn, replicas, deadline_ms)
        queue = self._waiting.setdefault(replicas, deque())
        if queue and queue[-1].lsn > lsn:  # not in commit order: keep the queue sorted
            items = sorted([*queue, waiter], key=lambda w: w.lsn)
            queue.clear()
            queue.extend(items)
        else:
            queue.append(waiter)
        self._waiter_seq += 1
        heapq.heappush(self._deadlines, (deadline_ms, self._waiter_seq, waiter))
        self.waiters += 1
        return None

    # ---- timers ------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> tuple[list[ReplicaState], list[WaitResult]]:
        """Mark silent replicas DISCONNECTED, forget long-gone ones, expire waiters.

        Returns the replicas that just went stale (to log once) and the expired waits.
        """
        stale: list[ReplicaState] = []
        for r in list(self._by_id.values()):
            silent = now_ms - r.last_seen_ms
            if silent > self.forget_after_ms:
                self._by_id.pop(r.replica_id, None)
                self._by_peer.pop(r.peer, None)
            elif silent > self.stale_after_ms and r.status != Status.DISCONNECTED:
                r.status = Status.DISCONNECTED
                stale.append(r)
        done: list[WaitResult] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            waiter = heapq.heappop(heap)[2]
            if not waiter.done:
                waiter.done = True
                self.waiters -= 1
                done.append(WaitResult(waiter.token, self.replicas_applied(waiter.lsn), True))
        if len(heap) > 2 * self.waiters + 1024:  # finished waiters linger: drop them
            self._deadlines = [e for e in heap if not e[2].done]
            heapq.heapify(self._deadlines)
            for wanted, queue in self._waiting.items():
                self._waiting[wanted] = deque(w for w in queue if not w.done)
        return stale, done

    def retention_floor(self) -> int | None:
        """Lowest LSN some known replica still needs (None: no replica needs anything).

        A replica restarts from its *durable* LSN (its applies are not synced: the primary's
        WAL is what makes that safe), so the floor is ``durable_lsn + 1``, not applied.
        Disconnected replicas keep their floor until forgotten, so a replica that restarts
        resumes by catch-up; the WAL's byte cap bounds what a dead one can hold.
        """
        holder = self.retention_holder()
        return holder[0] if holder else None

    def retention_holder(self) -> tuple[int, str] | None:
        """``(lsn, replica id)`` of the replica with the lowest need (see ``retention_floor``)."""
        needs = [
            (
                (r.bootstrap_snapshot_lsn if r.bootstrap_snapshot_lsn else r.durable_lsn) + 1,
                r.replica_id,
            )
            for r in self._by_id.values()
        ]
        return min(needs) if needs else None

    def replicas(self) -> list[ReplicaState]:
        return sorted(self._by_id.values(), key=lambda r: r.replica_id)

    # ---- internals ---------------------------------------------------------------------------

    def _advance(
        self, r: ReplicaState, applied_lsn: int, durable_lsn: int, now_ms: int
    ) -> list[WaitResult]:
        r.last_seen_ms = now_ms
        r.applied_lsn = applied_lsn
        r.durable_lsn = durable_lsn
        self._prune_commits()
        return self._release() if self.waiters else []

    def _check_position(self, applied_lsn: int, durable_lsn: int) -> None:
        if applied_lsn > self.primary_lsn:
            raise ImpossiblePositionError(
                f"applied LSN {applied_lsn} is past the primary's last LSN {self.primary_lsn}"
            )
        if durable_lsn > applied_lsn:
            raise ImpossiblePositionError(
                f"durable LSN {durable_lsn} is past the applied LSN {applied_lsn}"
            )

    def _release(self) -> list[WaitResult]:
        """Waiters whose LSN enough replicas have applied: the front of each count's queue."""
        applied = sorted(_holds(r) for r in self._by_id.values() if r.status in _COUNTED)
        done: list[WaitResult] = []
        for wanted, queue in self._waiting.items():
            if wanted > len(applied):
                continue
            reached = applied[-wanted]  # the wanted-th highest applied LSN
            while queue and (queue[0].done or queue[0].lsn <= reached):
                waiter = queue.popleft()
                if waiter.done:
                    continue
                waiter.done = True
                self.waiters -= 1
                count = len(applied) - bisect.bisect_left(applied, waiter.lsn)
                done.append(WaitResult(waiter.token, count, timed_out=False))
        for wanted in [k for k, q in self._waiting.items() if not q]:
            del self._waiting[wanted]
        return done

    def _prune_commits(self) -> None:
        if not self._by_id:
            return
        floor = min(r.applied_lsn for r in self._by_id.values())
        i = bisect.bisect_right(self._commit_lsns, floor)
        if i > 1024:
            self._trim(i)

    def _trim(self, n: int) -> None:
        del self._commit_lsns[:n]
        del self._commit_ms[:n]
