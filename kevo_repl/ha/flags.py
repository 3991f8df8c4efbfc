"""The command-line flags of ``node``, ``cluster --failover`` and of the etcd forms of
``status`` and ``switchover``.

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
    "DEFAULT_MEMBERS",
    "DEFAULT_TTL_S",
    "etcd_flags",
    "failover_cluster_flags",
    "member_flags",
    "node_or_etcd_misuse",
    "status_flags",
    "switchover_flags",
]

DEFAULT_SCOPE = "kevo"
DEFAULT_TTL_S = 10
DEFAULT_MEMBERS = 3


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
    """``node``: the serving flags are added by the caller; these are the member's own.

    ``--id`` and ``--etcd`` are required after ``--config`` is read (``cli._REQUIRED``), not
    by argparse, which would refuse them from a config file (a systemd unit's case)."""
    p.add_argument("--id", help="this member's id, unique in the scope (required)")
    etcd_flags(p, required=False)
    p.add_argument(
        "--ttl-s",
        type=count,
        default=DEFAULT_TTL_S,
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


def failover_cluster_flags(p: argparse.ArgumentParser, count: Callable[[str], int]) -> None:
    """``cluster``'s flags for the failover group; ``--members``/``--ttl-s`` default to None
    so that giving them without ``--failover`` is refused rather than silently ignored."""
    p.add_argument(
        "--failover",
        action="store_true",
        help="instead of a fixed primary: members that elect their leader through a local "
        "etcd on P+90 (its data in DATA/etcd), as `kevo-repl node` does",
    )
    p.add_argument(
        "--members",
        type=count,
        default=None,
        help=f"with --failover: members n1..nN on P, P+10, ... (default {DEFAULT_MEMBERS})",
    )
    p.add_argument(
        "--ttl-s",
        type=count,
        default=None,
        help=f"with --failover: the leader lease in seconds (default {DEFAULT_TTL_S}); a "
        "leader that dies is replaced about this long after",
    )


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
