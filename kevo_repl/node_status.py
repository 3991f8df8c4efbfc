"""``Client.status_message()``'s answer, typed: names instead of enum numbers, history ids as hex.

The wire's ``StatusResponse`` is for nodes; a program asking "is this replica ready, how far
behind is it" should not need protobuf enums or ``bytes.hex()``. These frozen dataclasses
carry the same facts as ``status --json`` (same names), so a script can move between the
two. ``Client.status_message()`` still gives the raw message.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevo_repl.wire import pb

__all__ = ["FollowerStatus", "NodeStatus", "role_name", "status_name"]

_ROLES: dict[int, str] = {
    pb.ROLE_PRIMARY: "primary",
    pb.ROLE_REPLICA: "replica",
    pb.ROLE_READONLY: "readonly",
}


def role_name(role: int) -> str:
    return _ROLES.get(role, "unknown")


def status_name(status: int) -> str:
    if status in pb.ReplicaStatus.values():
        return pb.ReplicaStatus.Name(status).removeprefix("STATUS_").lower()  # type: ignore[arg-type]
    return "unknown"


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    """One follower as its upstream sees it (lags measured on the upstream's clock)."""

    id: str
    address: str
    role: str
    status: str  # connecting, syncing, bootstrapping, ready, disconnected, error
    applied_lsn: int
    durable_lsn: int
    received_lsn: int
    lag_entries: int
    write_lag_s: float
    flush_lag_s: float
    replay_lag_s: float
    entries_per_s: float
    bytes_per_s: float
    last_seen_s: float
    bootstraps: int
    catchups: int
    bootstrap_progress: float
    error: str

    @classmethod
    def from_message(cls, r: pb.ReplicaInfo) -> FollowerStatus:
        return cls(
            id=r.replica_id,
            address=r.address,
            role=role_name(r.role),
            status=status_name(r.status),
            applied_lsn=r.applied_lsn,
            durable_lsn=r.durable_lsn,
            received_lsn=r.received_lsn,
            lag_entries=r.lag_entries,
            write_lag_s=r.write_lag_s,
            flush_lag_s=r.flush_lag_s,
            replay_lag_s=r.replay_lag_s,
            entries_per_s=r.entries_per_s,
            bytes_per_s=r.bytes_per_s,
            last_seen_s=r.last_seen_ms / 1000.0,
            bootstraps=r.bootstraps,
            catchups=r.catchups,
            bootstrap_progress=r.bootstrap_progress,
            error=r.error_message,
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's own state; for a replica also its view of its upstream."""

    node_id: str
    role: str  # primary, replica
    status: str  # a replica's own status; "ready" for a primary that accepts writes
    history_id: str  # hex
    history: tuple[tuple[str, int], ...]  # (history id hex, fork LSN), oldest first
    applied_lsn: int
    durable_lsn: int
    retained_from_lsn: int
    wal_bytes: int
    entries_per_s: float  # published over the last 10 s
    bytes_per_s: float
    primary: str  # HOST:PORT of the primary at the top of its line
    upstream: str  # a replica: the node it follows
    upstream_lsn: int
    write_lag_s: float  # a replica: its own lags as its upstream last measured them
    flush_lag_s: float
    replay_lag_s: float
    bootstraps: int
    catchups: int
    gaps: int
    bootstrap_progress: float
    error: str
    upstream_problem: str
    coordinator: str  # a member of an etcd group: what its agent sees ("" if none)
    fenced: str  # a primary: why it accepts no writes now ("" if it does)
    server_key: str
    followers: tuple[FollowerStatus, ...]

    @property
    def ready(self) -> bool:
        """What ``status --ready`` checks: a primary, or a replica caught up and following."""
        return self.role == "primary" or self.status == "ready"

    @property
    def lag_entries(self) -> int:
        return max(0, self.upstream_lsn - self.applied_lsn) if self.upstream else 0

    @classmethod
    def from_message(cls, s: pb.StatusResponse) -> NodeStatus:
        primary = s.role == pb.ROLE_PRIMARY
        return cls(
            node_id=s.node_id,
            role=role_name(s.role),
            status=("ready" if not s.fenced else "fenced") if primary else status_name(s.status),
            history_id=s.history_id.hex(),
            history=tuple((h.history_id.hex(), h.fork_lsn) for h in s.history),
            applied_lsn=s.lsn,
            durable_lsn=s.durable_lsn,
            retained_from_lsn=s.retained_from_lsn,
            wal_bytes=s.wal_bytes,
            entries_per_s=s.entries_per_s,
            bytes_per_s=s.bytes_per_s,
            primary=s.primary,
            upstream=s.upstream,
            upstream_lsn=s.upstream_lsn,
            write_lag_s=s.write_lag_s,
            flush_lag_s=s.flush_lag_s,
            replay_lag_s=s.replay_lag_s,
            bootstraps=s.bootstraps,
            catchups=s.catchups,
            gaps=s.gaps,
            bootstrap_progress=s.bootstrap_progress,
            error=s.error_message,
            upstream_problem=s.upstream_problem,
            coordinator=s.coordinator,
            fenced=s.fenced,
            server_key=s.server_key,
            followers=tuple(FollowerStatus.from_message(r) for r in s.replicas),
        )
