"""``kevo-repl promote``, ``repoint`` and ``switchover``: changing who follows whom.

The nodes carry out each change (``node/roles.py``); these commands check first what a node
cannot see alone, and print the outcome:

* ``promote`` asks the replica for the other followers of its upstream (it heard them in
  heartbeat replies) and refuses when a reachable one on the same line is ahead of it
  (promoting the less advanced replica would lose what only the other has), unless
  ``--force``;
* ``repoint`` walks the new upstream's line and refuses a cycle;
* ``switchover`` hands over (the primary stops accepting writes and says its last LSN),
  waits until the target has that LSN on disk, promotes it, and repoints the old primary to
  it: no acknowledged write lost, no bootstrap. A target that does not catch up in time
  gets the primary back (the handover is cancelled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from kevo_repl.adapters.security import ClientCurve
from kevo_repl.client import Client, NodeUnreachableError, RemoteError
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb

__all__ = ["promote_command", "repoint_command", "switchover_command"]

_HOPS = 16


def _curve(args: argparse.Namespace) -> ClientCurve | None:
    if args.keys is None:
        return None
    return ClientCurve.from_dir(args.keys, args.key_name, args.server_key)


def _client(args: argparse.Namespace, node: str) -> Client:
    return Client(node, timeout_ms=args.request_timeout_ms, curve=_curve(args))


def _status(
    args: argparse.Namespace, node: str, timeout_ms: int | None = None
) -> pb.StatusResponse:
    timeout = timeout_ms or args.request_timeout_ms
    with Client(node, timeout_ms=timeout, curve=_curve(args)) as c:
        return c.status_message()


def promote_command(args: argparse.Namespace) -> int:
    me = _status(args, args.node)
    if me.role == pb.ROLE_PRIMARY:
        raise KevoError(f"{args.node} is a primary already")
    ahead = []
    for peer in me.peers:
        try:
            s = _status(args, peer, 500)
        except (NodeUnreachableError, RemoteError):
            continue
        if s.history_id == me.history_id and s.lsn > me.lsn:
            ahead.append(f"{peer} (at LSN {s.lsn})")
    if ahead and not args.force:
        raise KevoError(
            f"{args.node} is at LSN {me.lsn}, and more advanced replicas answer: "
            f"{', '.join(ahead)}. Promote one of those, or pass --force to lose what only "
            "they have"
        )
    with _client(args, args.node) as c:
        resp = c.call(pb.Request(promote=pb.PromoteRequest(force=args.force))).promote
    doc = {
        "node": args.node,
        "fork_lsn": resp.fork_lsn,
        "history_id": resp.history_id.hex(),
        "history": [{"id": h.history_id.hex(), "fork_lsn": h.fork_lsn} for h in resp.history],
        "warning": f"more advanced replicas: {', '.join(ahead)}" if ahead else "",
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"promoted {args.node}: history {doc['history_id']} forked at LSN {resp.fork_lsn}")
        if ahead:
            print(f"warning: {doc['warning']}")
    return 0


def _line_reaches(args: argparse.Namespace, start: str, target: str, target_id: str) -> bool:
    """True when following upstreams from ``start`` comes back to ``target``."""
    node = start
    for _ in range(_HOPS):
        if node == target:
            return True
        s = _status(args, node)
        if s.node_id == target_id:
            return True
        if s.role == pb.ROLE_PRIMARY or not s.upstream:
            return False
        node = s.upstream
    return True  # a line this long is a loop already


def repoint_command(args: argparse.Namespace) -> int:
    me = _status(args, args.node)
    if _line_reaches(args, args.primary, args.node, me.node_id):
        raise KevoError(f"{args.node} cannot follow {args.primary}: that node follows it")
    with _client(args, args.node) as c:
        resp = c.call(pb.Request(repoint=pb.RepointRequest(upstream=args.primary))).repoint
    was = resp.previous or "(it was a primary)"
    print(f"{args.node} now follows {args.primary} (before: {was})")
    return 0


def switchover_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    target = _status(args, args.to)
    if target.role == pb.ROLE_PRIMARY:
        raise KevoError(f"{args.to} is a primary already")
    if args.node not in (target.upstream, target.primary):
        raise KevoError(f"{args.to} does not follow {args.node} (it follows {target.upstream})")
    with _client(args, args.node) as c:
        last = c.call(pb.Request(handover=pb.HandoverRequest(to=args.to))).handover.last_lsn
    _note(f"{args.node} accepts no more writes; its last LSN is {last}")

    def caught_up() -> bool:
        s = _status(args, args.to)
        return s.lsn >= last and s.durable_lsn >= last

    if not _wait(caught_up, args.timeout_ms / 1000):
        with _client(args, args.node) as c:
            c.call(pb.Request(handover=pb.HandoverRequest(cancel=True)))
        raise KevoError(
            f"{args.to} did not reach LSN {last} within {args.timeout_ms} ms; "
            f"{args.node} takes writes again"
        )
    with _client(args, args.to) as c:
        promoted = c.call(pb.Request(promote=pb.PromoteRequest(force=True))).promote
    with _client(args, args.node) as c:
        c.call(pb.Request(repoint=pb.RepointRequest(upstream=args.to)))
    seconds = time.monotonic() - started
    print(
        f"switched over to {args.to} in {seconds:.2f} s: history "
        f"{promoted.history_id.hex()} forked at LSN {promoted.fork_lsn}; "
        f"{args.node} follows it"
    )
    return 0


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (NodeUnreachableError, RemoteError):
            pass
        time.sleep(0.02)
    return False


def _note(text: str) -> None:
    print(f"kevo-repl: {text}", file=sys.stderr)
