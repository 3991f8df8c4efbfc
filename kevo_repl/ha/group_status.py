"""``kevo-repl status --etcd``: a whole group as etcd holds it, from one read of its scope.

One node's ``status`` shows what that node sees; during a failover the question is what the
*group* agreed on: who holds the leader key, what each member last published, how far each
is behind the leader, and whether a change is under way. Everything here comes from etcd
(``ha/scope.py``), so it answers even when the leader's node does not. ``group_doc`` is
pure (a ``Scope`` and a clock in, the JSON document out), and the text is drawn from it.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from kevo_repl.adapters.clock import wall_us
from kevo_repl.adapters.etcd_kv import EtcdKV
from kevo_repl.core.election import Failover, Scope
from kevo_repl.core.errors import UsageError
from kevo_repl.ha.scope import ScopeKeys, read_scope
from kevo_repl.watch_view import stamp, watch_live, watch_printed

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["group_doc", "group_text", "open_kv", "run_group_status", "say"]


def open_kv(urls: str) -> EtcdKV:
    """A client for ``--etcd``; a malformed endpoint is a bad argument (exit 2)."""
    try:
        return EtcdKV(urls)
    except ValueError as exc:
        raise UsageError(f"--etcd: {exc}") from None


def say(message: str) -> None:
    print(f"kevo-repl: {message}", file=sys.stderr, flush=True)


def group_doc(scope: Scope, name: str, where: str, now_ms: int) -> dict[str, Any]:
    """The ``status --etcd --json`` document (its keys are the CLI's contract)."""
    leader = scope.leader
    top = scope.members.get(leader.id) if leader else None
    optime = scope.optime
    # The leader's position: its optime is written at every change, its record once a turn.
    leader_lsn = max(
        top.lsn if top else 0,
        optime.lsn if optime and leader and optime.id == leader.id else 0,
    )
    if leader is None and optime is not None:
        leader_lsn = optime.lsn  # no leader: lag against the last one's last position
    members = []
    for m in sorted(scope.members.values(), key=lambda r: r.id):
        members.append(
            {
                "id": m.id,
                "addr": m.addr,
                "role": m.role,
                "status": m.status,
                "leader": m.leader,
                "is_leader": leader is not None and m.id == leader.id,
                "history": m.history,
                "timeline": m.timeline,
                "durable_lsn": m.lsn,
                "applied_lsn": m.applied_lsn,
                "lag_entries": max(0, leader_lsn - m.lsn),
                "promotable": m.promotable,
                "bootstraps": m.bootstraps,
                "etcd_ok": m.etcd_ok,
                "age_s": round(max(0, now_ms - m.updated_ms) / 1000, 1),
            }
        )
    last = scope.last_failover
    return {
        "scope": name,
        "etcd": where,
        "revision": scope.revision,
        "initialized": scope.initialized,
        "leader": (
            {"id": leader.id, "addr": leader.addr, "since_ms": leader.since_ms} if leader else None
        ),
        "leader_lsn": leader_lsn,
        "members": members,
        "last_failover": _change(last) if last else None,
        "switchover": scope.switchover,
        "optime": (
            {"id": optime.id, "lsn": optime.lsn, "timeline": optime.timeline} if optime else None
        ),
    }


def _change(last: Failover) -> dict[str, Any]:
    return {
        "kind": last.kind,
        "from": last.previous,
        "to": last.to,
        "at_ms": last.at_ms,
        "lsn": last.lsn,
    }


def _when(at_ms: int, now_ms: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))
    return f"{when} ({max(0, now_ms - at_ms) / 1000:.1f} s ago)"


def _head(doc: dict[str, Any], now_ms: int) -> list[str]:
    lines = [f"scope {doc['scope']} in etcd {doc['etcd']} (revision {doc['revision']})"]
    leader = doc["leader"]
    if leader is None and not doc["initialized"] and not doc["members"]:
        lines.append("no leader: no member has ever joined this scope (is --scope right?)")
    elif leader is None:
        last = doc["optime"]
        was = f" (the last one was {last['id']} at LSN {last['lsn']})" if last else ""
        lines.append(f"no leader{was}: the members elect one")
    else:
        lines.append(
            f"leader {leader['id']} at {leader['addr']}, since {_when(leader['since_ms'], now_ms)}"
            f", LSN {doc['leader_lsn']}"
        )
    return lines


def _tail(doc: dict[str, Any], now_ms: int) -> list[str]:
    lines = []
    if (last := doc["last_failover"]) is not None:
        was = f" from {last['from']}" if last["from"] else ""
        lines.append(
            f"last change: {last['kind']}{was} to {last['to']} at "
            f"{_when(last['at_ms'], now_ms)}, LSN {last['lsn']}"
        )
    if (req := doc["switchover"]) is not None:
        to = req.get("to") or "(the most advanced member)"
        what = f"switchover to {to}, timeout {req.get('timeout_s', '?')} s, id {req.get('id')}"
        if "error" in req:
            lines.append(f"refused {what}: {req['error']}")
        else:
            lines.append(f"pending {what}")
    return lines


def group_renderable(doc: dict[str, Any], now_ms: int) -> RenderableType:
    """Head lines, the members' table and the last change, for text and ``--watch``."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text("\n".join([*_head(doc, now_ms), ""]))
    tail = Text("\n".join(["", *_tail(doc, now_ms)]))
    if not doc["members"]:
        return Group(head, Text("no live members"), tail)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    numeric = ("TIMELINE", "DURABLE", "APPLIED", "LAG", "BOOTSTRAPS", "AGE")
    for name in ("ID", "ADDRESS", "ROLE", "STATUS", "HISTORY", *numeric, "ETCD"):
        table.add_column(name, justify="right" if name in numeric else "left")
    for m in doc["members"]:
        table.add_row(
            m["id"] + (" *" if m["is_leader"] else ""),
            m["addr"],
            m["role"],
            m["status"],
            m["history"][:8],
            str(m["timeline"]),
            str(m["durable_lsn"]),
            str(m["applied_lsn"]),
            str(m["lag_entries"]),
            str(m["bootstraps"]),
            f"{m['age_s']:.1f}s",
            "ok" if m["etcd_ok"] else "UNREACHABLE",
        )
    return Group(head, table, tail)


def group_text(doc: dict[str, Any], now_ms: int) -> str:
    """Plain text (no colour, no wrapping), as ``status_format.status_text`` draws a node."""
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=400, color_system=None, highlight=False).print(
        group_renderable(doc, now_ms)
    )
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()).strip("\n")


def run_group_status(args: argparse.Namespace) -> int:
    """``status --etcd``: exit 3 (naming the endpoints) if etcd does not answer at first."""
    kv = open_kv(args.etcd)
    keys = ScopeKeys(args.scope)

    def read() -> tuple[dict[str, Any], int]:  # the document and the clock it used
        now = wall_us() // 1000
        return group_doc(read_scope(kv, keys), keys.name, kv.where, now), now

    doc, now = read()  # etcd silent at first: exit 3, naming it (cli.main)
    if args.watch and not args.json and sys.stdout.isatty():
        watch_live(read, (doc, now), lambda got: group_renderable(*got), args.interval)
        return 0
    _show(args, doc, now)
    if args.watch:
        watch_printed(read, lambda got: _show(args, *got), args.interval)
    return 0


def _show(args: argparse.Namespace, doc: dict[str, Any], now: int) -> None:
    if args.json:
        print(json.dumps(doc), flush=True)
        return
    head = stamp(args.interval) + "\n" if args.watch else ""
    print(head + group_text(doc, now), flush=True)
