"""The command-line flags of ``node``, ``cluster --failover`` and of the etcd forms of
``status`` and ``switchover``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = [
    "DEFAULT_MEMBERS",
    "DEFAULT_TTL_S",
    "etcd_flags",
    "failover_cluster_flags",
    "member_flags",
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
