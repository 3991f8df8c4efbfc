"""The command-line flags of ``node`` and of the etcd forms of ``status`` and ``switchover``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["etcd_flags", "member_flags"]

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
    """``node``: the serving flags are added by the caller; these are the member's own.

    ``--id`` and ``--etcd`` are required after ``--config`` is read (``cli._REQUIRED``), not
    by argparse, which would refuse them from a config file (a systemd unit's case)."""
    p.add_argument("--id", help="this member's id, unique in the scope (required)")
    etcd_flags(p, required=False)
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
