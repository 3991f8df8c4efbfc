"""The primary's view of its replicas: progress, lag, liveness, retention floor, waiters.

Pure bookkeeping driven by the primary's driver loop (``note_commit`` after each commit,
``register`` / ``heartbeat`` / ``ack`` as requests arrive, ``tick`` on a timer). Lag is
measured here, on the primary, from its own commit times, so replica clocks never matter:
``lag_ms`` is the age of the oldest commit a replica has not applied, and ``lags_s`` gives
PostgreSQL's three (write, flush, replay): for each of the follower's received, durable and
applied positions, how long the latest commit it reached took to get there, or while it is
behind, the age of the oldest commit it has not reached.

Identity: a replica id is held by one peer (ROUTER routing id) at a time. A Register for an id
already held by another live peer is refused as a duplicate unless it comes from the same
address (the same replica reconnecting with a new socket after a restart or a reconnect).

What a peer claims is checked, not believed: an applied LSN above what the primary committed,
or a durable LSN above the applied one, is refused (``ImpossiblePositionError``), so a forged
Ack can neither release a write that waits for replicas nor show a replica as caught up.
Writes waiting for replicas are parked in ``WriteWaiters`` and their number is capped
(``max_waiters``); the number of known replicas is capped too (``max_replicas``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kevo_repl.core.commit_times import CommitTimes
from kevo_repl.core.follower_types import Status
from kevo_repl.core.throughput import RateWindow
from kevo_repl.core.write_waiters import WaitResult, WriteWaiters

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
    received_lsn: int = 0  # written to its WAL (display only: never counted for a write)
    # The time the latest commit each position reached took to get there (ms, -1: unknown).
    write_delay_ms: int = -1
    flush_delay_ms: int = -1
    replay_delay_ms: int = -1
    rate: RateWindow = field(default_factory=RateWindow)
    compression: int = 0  # the codec it asked for on Register (0: none)


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
    max_replicas: int = 1024
    max_waiters: int = 100_000
    primary_lsn: int = 0
    _by_peer: dict[bytes, ReplicaState] = field(default_factory=dict)
    _by_id: dict[str, ReplicaState] = field(default_factory=dict)
    commits: CommitTimes = field(default_factory=CommitTimes)
    parked: WriteWaiters = field(default_factory=WriteWaiters)
    # Some follower heard lately asked for a compressed stream: only then is each record
    # compressed (once, for all of them). Kept by register and tick, read per publish.
    wants_compression: bool = False

    @property
    def waiters(self) -> int:
        """Writes parked until enough replicas apply them."""
        return self.parked.count

    # ---- commits and lag -------------------------------------------------------------------

    def note_commit(self, last_lsn: int, now_ms: int, nbytes: int = 0) -> None:
        """Remember when each group of ``nbytes`` record bytes committed: the basis of lag
        in time and of the followers' bytes/s."""
        self.primary_lsn = last_lsn
        self.commits.note(last_lsn, now_ms, nbytes)

    def lag_entries(self, replica: ReplicaState) -> int:
        return max(0, self.primary_lsn - replica.applied_lsn)

    def lag_ms(self, replica: ReplicaState, now_ms: int) -> int:
        """Age of the oldest commit the replica has not applied (0 when caught up)."""
        return self.commits.age_past(replica.applied_lsn, now_ms)

    def lags_s(self, r: ReplicaState, now_ms: int) -> tuple[float, float, float]:
        """PostgreSQL's ``(write_lag, flush_lag, replay_lag)`` in seconds (see the module)."""
        return (
            self._lag(r.received_lsn, r.write_delay_ms, now_ms) / 1000.0,
            self._lag(r.durable_lsn, r.flush_delay_ms, now_ms) / 1000.0,
            self._lag(r.applied_lsn, r.replay_delay_ms, now_ms) / 1000.0,
        )

    def rates(self, r: ReplicaState, now_ms: int) -> tuple[float, float]:
        """Entries/s and record bytes/s the follower applied over the last 10 s."""
        return r.rate.rates(now_ms, r.applied_lsn, self.commits.bytes_at(r.applied_lsn))

    def _lag(self, position: int, delay_ms: int, now_ms: int) -> int:
        if position < self.primary_lsn:
            return self.commits.age_past(position, now_ms)
        return max(0, delay_ms)

    # ---- requests --------------------------------------------------------------------------

    def register(
        self,
        replica_id: str,
        peer: bytes,
        address: str,
        role: int,
        applied_lsn: int,
        now_ms: int,
        compression: int = 0,
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
            rate=RateWindow.starting(now_ms, applied_lsn, self.commits.bytes_at(applied_lsn)),
            compression=compression,
        )
        if old is not None:
            state.bootstraps, state.catchups = old.bootstraps, old.catchups
        self._by_id[replica_id] = state
        self._by_peer[peer] = state
        self.wants_compression = self.wants_compression or bool(compression)
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
        received_lsn: int = 0,
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
        return r, self._advance(r, applied_lsn, durable_lsn, now_ms, received_lsn)

    def ack(
        self,
        peer: bytes,
        applied_lsn: int,
        durable_lsn: int,
        now_ms: int,
        received_lsn: int = 0,
    ) -> tuple[ReplicaState | None, list[WaitResult]]:
        r = self._by_peer.get(peer)
        if r is None:
            return None, []
        self._check_position(applied_lsn, durable_lsn)
        if r.status in (Status.DISCONNECTED, Status.CONNECTING):
            r.status = Status.SYNCING if applied_lsn < self.primary_lsn else Status.READY
        return r, self._advance(r, applied_lsn, durable_lsn, now_ms, received_lsn)

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
        self.parked.park(token, lsn, replicas, deadline_ms)
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
        self.wants_compression = any(
            r.compression and r.status != Status.DISCONNECTED for r in self._by_id.values()
        )
        return stale, self.parked.expire(now_ms, self.replicas_applied)

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
        self,
        r: ReplicaState,
        applied_lsn: int,
        durable_lsn: int,
        now_ms: int,
        received_lsn: int,
    ) -> list[WaitResult]:
        r.last_seen_ms = now_ms
        # Received is display only, so a follower without a WAL position (or a wild one) is
        # clamped between what it applied and what was committed instead of refused.
        received = min(max(received_lsn, applied_lsn), self.primary_lsn)
        if r.status in _COUNTED:  # a joining store's position may be of another history
            commits = self.commits
            r.write_delay_ms = _or(
                commits.delay_to(r.received_lsn, received, now_ms), r.write_delay_ms
            )
            r.flush_delay_ms = _or(
                commits.delay_to(r.durable_lsn, durable_lsn, now_ms), r.flush_delay_ms
            )
            r.replay_delay_ms = _or(
                commits.delay_to(r.applied_lsn, applied_lsn, now_ms), r.replay_delay_ms
            )
            r.rate.note(now_ms, applied_lsn, commits.bytes_at(applied_lsn))
        r.received_lsn = received
        r.applied_lsn = applied_lsn
        r.durable_lsn = durable_lsn
        if self._by_id:
            self.commits.drop_through(
                min(min(x.applied_lsn, x.durable_lsn) for x in self._by_id.values())
            )
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
        held = sorted(_holds(r) for r in self._by_id.values() if r.status in _COUNTED)
        return self.parked.release(held)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
