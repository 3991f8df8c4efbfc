"""Registry entries as the wire's ``ReplicaInfo``: one mapping shared by Status and metrics."""

from __future__ import annotations

from kevo_repl.core.registry import Registry, ReplicaState
from kevo_repl.wire import pb

__all__ = ["replica_info"]


def replica_info(r: ReplicaState, registry: Registry, now_ms: int) -> pb.ReplicaInfo:
    return pb.ReplicaInfo(
        replica_id=r.replica_id,
        address=r.address,
        role=r.role,  # type: ignore[arg-type]
        status=r.status.value,  # type: ignore[arg-type]
        last_seen_ms=max(0, now_ms - r.last_seen_ms),
        applied_lsn=r.applied_lsn,
        durable_lsn=r.durable_lsn,
        lag_entries=registry.lag_entries(r),
        lag_ms=registry.lag_ms(r, now_ms),
        error_message=r.error_message,
        bootstraps=r.bootstraps,
        catchups=r.catchups,
        bootstrap_progress=r.bootstrap_progress,
    )
