"""Status for people (a table) and for scripts (one JSON object, keys fixed by the CLI contract)."""

from __future__ import annotations

from typing import Any

from kevo_repl.wire import pb

__all__ = ["role_name", "status_json", "status_name", "status_text"]


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


def _replicas(s: pb.StatusResponse) -> list[dict[str, Any]]:
    return [
        {
            "id": r.replica_id,
            "address": r.address,
            "role": role_name(r.role),
            "status": status_name(r.status),
            "applied_lsn": r.applied_lsn,
            "durable_lsn": r.durable_lsn,
            "lag_entries": r.lag_entries,
            "lag_ms": r.lag_ms,
            "last_seen_ms": r.last_seen_ms,
            "bootstraps": r.bootstraps,
            "catchups": r.catchups,
            "bootstrap_progress": round(r.bootstrap_progress, 4),
            "error": r.error_message,
        }
        for r in s.replicas
    ]


def status_json(s: pb.StatusResponse) -> dict[str, Any]:
    common = {
        "node_id": s.node_id,
        "history_id": s.history_id.hex(),
        "history": [{"id": h.history_id.hex(), "fork_lsn": h.fork_lsn} for h in s.history],
        "durable_lsn": s.durable_lsn,
        "retained_from_lsn": s.retained_from_lsn,
        "wal_bytes": s.wal_bytes,
        "retention_held_by": s.retention_held_by,
        "server_key": s.server_key,
        "replicas": _replicas(s),
    }
    if s.role == pb.ROLE_PRIMARY:
        sync = {
            "replicas": s.sync.replicas,
            "timeout_ms": s.sync.timeout_ms,
            "refuse": s.sync.refuse,
        }
        return {"role": "primary", **common, "lsn": s.lsn, "fenced": s.fenced, "sync": sync}
    return {
        "role": role_name(s.role),
        **common,
        "status": status_name(s.status),
        "applied_lsn": s.lsn,
        "primary": s.primary,
        "upstream": s.upstream,
        "bootstraps": s.bootstraps,
        "catchups": s.catchups,
        "gaps": s.gaps,
        "bootstrap_progress": round(s.bootstrap_progress, 4),
        "error": s.error_message,
        "upstream_problem": s.upstream_problem,
    }


def status_text(s: pb.StatusResponse) -> str:
    doc = status_json(s)
    held = f", held by {doc['retention_held_by']}" if doc["retention_held_by"] else ""
    wal = f"WAL retained from {doc['retained_from_lsn']} ({doc['wal_bytes']} bytes{held})"
    if doc["role"] != "primary":
        upstream = doc["upstream"] or doc["primary"]
        via = f" via {upstream}" if upstream != doc["primary"] else ""
        lines = [
            f"{doc['role']} {doc['node_id']}: {doc['status']}, applied LSN {doc['applied_lsn']}"
            f" (durable {doc['durable_lsn']}), primary {doc['primary']}{via}",
            f"bootstraps {doc['bootstraps']}, catch-ups {doc['catchups']}, gaps {doc['gaps']}; "
            + wal,
        ]
        if doc["error"]:
            lines.append(f"error: {doc['error']}")
        if doc["upstream_problem"]:
            lines.append(str(doc["upstream_problem"]))
        if not doc["replicas"]:
            return "\n".join(lines)
        lines.append("")
    else:
        lines = [
            f"primary {doc['node_id']}  history {doc['history_id']}",
            f"LSN {doc['lsn']} (durable {doc['durable_lsn']}), {wal}",
        ]
        if doc["fenced"]:
            lines.append(f"accepts no writes: {doc['fenced']}")
        sync = doc["sync"]
        if sync["replicas"]:
            refuse = ", refused while fewer are connected" if sync["refuse"] else ""
            lines.append(
                f"every write waits for {sync['replicas']} replica(s), up to "
                f"{sync['timeout_ms']} ms{refuse}"
            )
        lines.append("")
    header = ("ID", "ADDRESS", "ROLE", "STATUS", "APPLIED", "LAG", "LAG_MS", "SEEN_MS_AGO")
    rows = [header] + [
        (
            r["id"],
            r["address"],
            r["role"],
            r["status"],
            str(r["applied_lsn"]),
            str(r["lag_entries"]),
            str(r["lag_ms"]),
            str(r["last_seen_ms"]),
        )
        for r in doc["replicas"]
    ]
    if len(rows) == 1:
        lines.append("no replicas")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
