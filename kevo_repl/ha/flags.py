"""The command-line flags of ``node`` and of the etcd forms of ``status`` and ``switchover``.

``status`` and ``switchover`` talk either to one node (``--node``) or to a whole group
through etcd (``--etcd``); which flags then apply is checked after parsing
(``node_or_etcd_misuse``), because argparse cannot say "exactly one of them, and ``--to``
means a HOST:PORT with one and a member id with the other".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kevo_repl.client_types import parse_node

__all__ = [
    "etcd_flags",
    "member_flags",
    "node_or_etcd_misuse",
    "status_flags",
    "switchover_flags",
]

DEFAULT_SCOPE = "kevo"


def etcd_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--etcd",
        required=required,
        default=None,
        metavar="URL[,URL...]",
        help="etcd endpoints, e.g. http://127.0.0.1:2379 (the group's coordinator)",
    )
    p.add_argument(
        "--scope", default=DEFAULT_SCOPE, help=f"the group's name in etcd (default {DEFAULT_SCOPE})"
    )


def member_flags(p: argparse.ArgumentParser, count: Callable[[str], int]) -> None:
    """``node``: the serving flags are added by the caller; these are the member's own."""
    p.add_argument("--id", required=True, help="this member's id, unique in the scope")
    etcd_flags(p, required=True)
    p.add_argument(
        "--ttl-s",
        type=count,
        default=10,
        help="leader lease in seconds: renewed every TTL/3; a leader that cannot renew "
        "stops accepting writes before it ends, and another member may then take over",
    )
    p.add_argument(
        "--max-lag-on-failover",
        type=count,
        default=100_000,
        metavar="ENTRIES",
        help="a member further behind the last leader's LSN than this never takes over",
    )
    p.add_argument("--fsync", choices=["always", "interval", "none"], default="always")


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def status_flags(p: argparse.ArgumentParser) -> None:
    """``status``: beside ``--node``, the etcd form's flags and the shared ones."""
    etcd_flags(p, required=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between refreshes")
    p.add_argument(
        "--ready", action="store_true", help="with --node: exit 1 unless primary or ready replica"
    )


def switchover_flags(p: argparse.ArgumentParser, count: Callable[[str], int]) -> None:
    """``switchover``: beside ``--node``, the etcd form's flags and the shared ones."""
    etcd_flags(p, required=False)
    p.add_argument(
        "--to",
        default="",
        help="with --node: HOST:PORT of the replica (required); with --etcd: the member id "
        "to hand over to (default: the most advanced other member)",
    )
    p.add_argument("--timeout-ms", type=count, default=30_000, help="for the target to catch up")
    p.add_argument("--json", action="store_true", help="with --etcd: print the outcome as JSON")


def node_or_etcd_misuse(args: argparse.Namespace) -> str | None:
    """Why ``status``/``switchover`` arguments do not fit together (None when they do)."""
    command = args.command
    if (args.node is None) == (args.etcd is None):
        whole = "the whole group" if command == "status" else "a handover through the leader"
        return (
            f"{command} needs --node HOST:PORT (one node) or --etcd URL ({whole}), "
            "exactly one of them"
        )
    if command == "status" and args.etcd is not None and args.ready:
        return "--ready checks one node: use it with --node, not --etcd"
    if command == "switchover" and args.node is not None:
        if not args.to:
            return "switchover --node needs --to HOST:PORT (the replica to hand over to)"
        try:
            parse_node(args.to)
        except ValueError as exc:
            return f"--to: {exc}"
        if args.json:
            return "--json is for switchover --etcd"
    return None
