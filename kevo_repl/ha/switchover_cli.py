"""``kevo-repl switchover --etcd``: ask the group's leader for a planned handover, and wait.

The client does not drive any node: in a group run through etcd only the leader's agent
may hand over (``ha/handover.py``), because only it holds the key it must move. The client
writes the request (in a transaction, so two clients cannot both think theirs was taken,
and only while there is a leader), then reads the scope every 50 ms until one of:

* the leader key names another member whose record says ``primary``, and the last change
  is that switchover: done (exit 0);
* the request carries ``"error"`` (refused, or the target did not catch up in time): the
  client prints it and removes the request (exit 1);
* the deadline (the request's timeout plus a grace for the agents' turns) passes: the
  client withdraws the request, which makes the leader cancel its handover (exit 1).

Ctrl-C withdraws the request too, so an abandoned client leaves nothing pending.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from kevo_repl.adapters.etcd_kv import EtcdKV, EtcdUnavailable
from kevo_repl.core.election import Scope
from kevo_repl.core.errors import KevoError
from kevo_repl.ha.group_status import open_kv, say
from kevo_repl.ha.scope import ScopeKeys, read_scope

__all__ = ["run_switchover"]

_POLL_S = 0.05
_GRACE_S = 5.0  # the leader's turn to notice, the target's turn to promote, and ours


def run_switchover(args: argparse.Namespace) -> int:
    """``switchover --etcd``: exit 0 moved, 1 refused/failed/timed out, 3 etcd unreachable."""
    kv = open_kv(args.etcd)
    keys = ScopeKeys(args.scope)
    timeout_s = args.timeout_ms / 1000
    request = {"id": uuid.uuid4().hex, "to": args.to, "timeout_s": timeout_s}
    started = time.monotonic()
    old = _write_request(kv, keys, request)  # etcd silent: exit 3 (cli.main)
    say(f"asked leader {old} to hand over to {args.to or 'the most advanced member'}")
    try:
        doc = _wait(kv, keys, request, old, started, started + timeout_s + _GRACE_S)
    except BaseException:  # etcd gone, a failure, Ctrl-C, the deadline: nothing left pending
        _withdraw(kv, keys, request["id"])
        raise
    if args.json:
        print(json.dumps(doc))
    else:
        print(
            f"switched over from {doc['from']} to {doc['to']} at LSN {doc['lsn']} "
            f"in {doc['took_s']:.2f} s"
        )
    return 0


def _write_request(kv: EtcdKV, keys: ScopeKeys, request: dict[str, Any]) -> str:
    """Put the request if none is there and the leader is the one read; the leader's id."""
    for _ in range(5):  # the leader key may change under us (a renewal rebinds it)
        scope = read_scope(kv, keys)
        if scope.leader is None:
            raise KevoError(
                f"no leader in scope {keys.name}: nothing to hand over from "
                f"(see `kevo-repl status --etcd {kv.where}`)"
            )
        if scope.switchover is not None:
            raise KevoError(_pending(scope.switchover, keys))
        took = kv.txn(
            [kv.absent(keys.switchover), kv.unchanged(keys.leader, scope.leader_revision)],
            [kv.put_op(keys.switchover, json.dumps(request))],
        )
        if took:
            return scope.leader.id
    raise KevoError(f"scope {keys.name} keeps changing; try again")


def _pending(other: dict[str, Any], keys: ScopeKeys) -> str:
    to = other.get("to") or "the most advanced member"
    if "error" in other:
        return (
            f"a finished switchover request (to {to}, id {other.get('id')}) is still in etcd "
            f"with its error: {other['error']}. Its client removes it; if that client is "
            f"gone, delete the key {keys.switchover}"
        )
    return (
        f"a switchover is already pending in scope {keys.name} (to {to}, id "
        f"{other.get('id')}); wait for it to finish"
    )


def _wait(
    kv: EtcdKV,
    keys: ScopeKeys,
    request: dict[str, Any],
    old: str,
    started: float,
    deadline: float,
) -> dict[str, Any]:
    """Poll until the outcome; the result document, or a ``KevoError`` saying why not."""
    mine = request["id"]
    outage: EtcdUnavailable | None = None
    while time.monotonic() < deadline:
        try:
            scope = read_scope(kv, keys)
        except EtcdUnavailable as exc:
            outage = exc  # the agents keep going without us: read again
            time.sleep(_POLL_S)
            continue
        outage = None
        req = scope.switchover
        if req is not None and req.get("id") != mine:
            raise KevoError(f"the request was replaced by another (id {req.get('id')})")
        if req is not None and "error" in req:
            raise KevoError(f"switchover failed: {req['error']}")
        if req is None:  # the move deletes it in the same transaction
            if scope.leader is not None and scope.leader.id == old:
                raise KevoError(f"the request was withdrawn by someone else; {old} still leads")
            done = _moved(scope, old, started)
            if done is not None:
                return done
        time.sleep(_POLL_S)
    if outage is not None:
        raise outage
    raise KevoError(
        f"no switchover within {request['timeout_s']:g} s (+{_GRACE_S:g} s); the request is "
        f"withdrawn, so {old} cancels its handover and takes writes again"
    )


def _moved(scope: Scope, old: str, started: float) -> dict[str, Any] | None:
    """The outcome once another member leads and its node says primary (None before)."""
    leader = scope.leader
    if leader is None or leader.id == old:
        return None
    record = scope.members.get(leader.id)
    if record is None or record.role != "primary":
        return None  # the key moved; its agent has not promoted the node yet
    last = scope.last_failover
    if last is None or last.kind != "switchover" or last.to != leader.id:
        kind = last.kind if last else "change"
        raise KevoError(f"{leader.id} leads now after a {kind}, not after this switchover")
    took = round(time.monotonic() - started, 3)
    return {"from": old, "to": leader.id, "lsn": last.lsn, "took_s": took}


def _withdraw(kv: EtcdKV, keys: ScopeKeys, mine: str) -> None:
    """Delete the request if it is still ours (someone else's is not ours to remove)."""
    try:
        _, found = kv.get_prefix(keys.switchover)
        entry = found.get(keys.switchover)
        if entry is None or json.loads(entry.value).get("id") != mine:
            return
        kv.txn([kv.unchanged(keys.switchover, entry.mod_revision)], [kv.delete_op(keys.switchover)])
    except (EtcdUnavailable, ValueError) as exc:
        say(f"could not remove the request {keys.switchover}: {exc}")
