"""Status for people (a table) and for scripts (one JSON object, keys fixed by the CLI contract).

The table is drawn with ``rich`` (imported here only when a table is drawn, so a node never
loads it): as text for ``status`` and ``cluster``, and as the live view of ``status --watch``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from kevo_repl.node_status import role_name, status_name
from kevo_repl.wire import pb
from kevo_repl.wire.compression import codec_name

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["status_json", "status_renderable", "status_text"]


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
            "received_lsn": r.received_lsn,
            "write_lag_s": round(r.write_lag_s, 6),
            "flush_lag_s": round(r.flush_lag_s, 6),
            "replay_lag_s": round(r.replay_lag_s, 6),
            "entries_per_s": round(r.entries_per_s, 1),
            "bytes_per_s": round(r.bytes_per_s, 1),
            "compression": codec_name(r.compression),
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
        "entries_per_s": round(s.entries_per_s, 1),
        "bytes_per_s": round(s.bytes_per_s, 1),
        "replicas": _replicas(s),
        "coordinator": s.coordinator,
        "compressed_raw_bytes": s.compressed_raw_bytes,
        "compressed_wire_bytes": s.compressed_wire_bytes,
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
        "upstream_lsn": s.upstream_lsn,
        "lag_entries": max(0, s.upstream_lsn - s.lsn),
        "write_lag_s": round(s.write_lag_s, 6),
        "flush_lag_s": round(s.flush_lag_s, 6),
        "replay_lag_s": round(s.replay_lag_s, 6),
        "compression": codec_name(s.compression),
        "upstream_wire_bytes": s.upstream_wire_bytes,
        "upstream_raw_bytes": s.upstream_raw_bytes,
    }


def status_text(s: pb.StatusResponse) -> str:
    """The table as plain text (no colour, no wrapping: a pipe or a log file gets it all)."""
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=400, color_system=None, highlight=False).print(status_renderable(s))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def status_renderable(s: pb.StatusResponse) -> RenderableType:
    """Head lines and the followers' table, for ``status_text`` and ``status --watch``."""
    from rich.console import Group
    from rich.text import Text

    doc = status_json(s)
    lines = _head(doc)
    if doc["role"] != "primary" and doc["status"] == "bootstrapping":
        from rich.table import Table

        line = Table.grid()  # a row ends its line, a bare bar would not
        line.add_row(_bar(doc["bootstrap_progress"]))
        head: RenderableType = Group(Text(lines[0]), line, Text("\n".join(lines[1:])))
        return Group(head, Text(""), _table(doc["replicas"])) if doc["replicas"] else head
    if doc["role"] != "primary" and not doc["replicas"]:
        return Text("\n".join(lines))
    if not doc["replicas"]:
        return Text("\n".join([*lines, "", "no replicas"]))
    return Group(Text("\n".join([*lines, ""])), _table(doc["replicas"]))


def _head(doc: dict[str, Any]) -> list[str]:
    held = f", held by {doc['retention_held_by']}" if doc["retention_held_by"] else ""
    wal = f"WAL retained from {doc['retained_from_lsn']} ({doc['wal_bytes']} bytes{held})"
    rate = f"{_count(doc['entries_per_s'])} entries/s, {_bytes(doc['bytes_per_s'])}/s (10 s)"
    if doc["role"] != "primary":
        upstream = doc["upstream"] or doc["primary"]
        via = f" via {upstream}" if upstream != doc["primary"] else ""
        lines = [
            f"{doc['role']} {doc['node_id']}: {_state(doc)}, applied LSN {doc['applied_lsn']}"
            f" (durable {doc['durable_lsn']}), primary {doc['primary']}{via}",
            f"behind its upstream: {doc['lag_entries']} entries (upstream LSN "
            f"{doc['upstream_lsn']}); lag write {_secs(doc['write_lag_s'])}, flush "
            f"{_secs(doc['flush_lag_s'])}, replay {_secs(doc['replay_lag_s'])}; {rate}",
            f"bootstraps {doc['bootstraps']}, catch-ups {doc['catchups']}, gaps {doc['gaps']}; "
            + wal,
        ]
        if doc["upstream_wire_bytes"]:
            lines.append(
                f"from its upstream ({doc['compression']}): "
                + _ratio(doc["upstream_raw_bytes"], doc["upstream_wire_bytes"])
            )
        lines += _compressed(doc)
        if doc["error"]:
            lines.append(f"error: {doc['error']}")
        if doc["upstream_problem"]:
            lines.append(str(doc["upstream_problem"]))
        if doc["coordinator"]:
            lines.append(f"coordinator: {doc['coordinator']}")
        return lines
    lines = [
        f"primary {doc['node_id']}  history {doc['history_id']}",
        f"LSN {doc['lsn']} (durable {doc['durable_lsn']}), {rate}",
        wal,
        *_compressed(doc),
    ]
    if doc["fenced"]:
        lines.append(f"accepts no writes: {doc['fenced']}")
    if doc["coordinator"]:
        lines.append(f"coordinator: {doc['coordinator']}")
    sync = doc["sync"]
    if sync["replicas"]:
        refuse = ", refused while fewer are connected" if sync["refuse"] else ""
        lines.append(
            f"every write waits for {sync['replicas']} replica(s), up to "
            f"{sync['timeout_ms']} ms{refuse}"
        )
    return lines


def _table(replicas: list[dict[str, Any]]) -> RenderableType:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    right = ("APPLIED", "DURABLE", "LAG", "LAG_MS", "WRITE_LAG", "FLUSH_LAG", "REPLAY_LAG")
    for name in ("ID", "ADDRESS", "ROLE", "STATUS", *right, "ENTRIES/S", "BYTES/S", "LINK", "SEEN"):
        table.add_column(
            name, justify="left" if name in ("ID", "ADDRESS", "ROLE", "STATUS") else "right"
        )
    copying = any(r["status"] == "bootstrapping" for r in replicas)
    if copying:  # a bar for each follower whose bootstrap runs
        table.add_column("BOOTSTRAP", justify="left")
    for r in replicas:
        bar = [_bar(r["bootstrap_progress"]) if r["status"] == "bootstrapping" else ""]
        table.add_row(
            r["id"],
            r["address"],
            r["role"],
            _state(r),
            str(r["applied_lsn"]),
            str(r["durable_lsn"]),
            str(r["lag_entries"]),
            str(r["lag_ms"]),
            _secs(r["write_lag_s"]),
            _secs(r["flush_lag_s"]),
            _secs(r["replay_lag_s"]),
            _count(r["entries_per_s"]),
            _bytes(r["bytes_per_s"]),
            r["compression"],
            f"{r['last_seen_ms'] / 1000:.1f}s ago",
            *(bar if copying else []),
        )
    return table


def _compressed(doc: dict[str, Any]) -> list[str]:
    raw, wire = doc["compressed_raw_bytes"], doc["compressed_wire_bytes"]
    return [f"compressed for its followers: {_ratio(raw, wire)}"] if raw else []


def _ratio(raw: int, wire: int) -> str:
    """What crossed the wire for how much data, and the ratio."""
    return f"{_bytes(wire)} on the wire for {_bytes(raw)} ({raw / max(wire, 1):.2f}x)"


def _bar(fraction: float) -> RenderableType:
    from rich.progress_bar import ProgressBar

    return ProgressBar(total=1.0, completed=fraction, width=20)


def _state(doc: dict[str, Any]) -> str:
    """The status, with the progress of a bootstrap that is running."""
    if doc["status"] == "bootstrapping":
        return f"bootstrapping {doc['bootstrap_progress'] * 100:.1f}%"
    return str(doc["status"])


def _secs(value: float) -> str:
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
