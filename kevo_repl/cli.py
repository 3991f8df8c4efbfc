"""``kevo-repl``: run nodes and talk to them.

Exit codes: 0 success; 1 a key is absent, the node refused, or the command failed (a bad load
line, an LSN retained away); 2 bad arguments or config file (with usage); 3 the node (or etcd,
for ``--etcd``) could not be reached in time; 130 a one-shot command interrupted. Following
commands (``tail``, ``status --watch``, ``logs --follow``, ``cluster``) end normally with
Ctrl-C: exit 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kevo_repl.client import RemoteError, UnresolvableHostError, parse_node
from kevo_repl.config import CONFIGURABLE_COMMANDS, ConfigError, config_defaults
from kevo_repl.core.errors import KevoError, UnreachableError, UsageError
from kevo_repl.ha.flags import (
    failover_cluster_flags,
    member_flags,
    node_or_etcd_misuse,
    status_flags,
    switchover_flags,
)
from kevo_repl.logs import configure_logging
from kevo_repl.tail_cli import tail_flags, tail_misuse
from kevo_repl.wire.batch import DEFAULT_LIMITS

__all__ = ["EXIT_ABSENT", "EXIT_UNREACHABLE", "EXIT_USAGE", "build_parser", "main"]

EXIT_ABSENT = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
_LEVELS = ["debug", "info", "warning", "error"]
_EPILOG = """\
A node is addressed as HOST:P, its PUB port; its ROUTER is P+1.
exit codes: 0 ok, 1 absent key / refused / failed, 2 bad arguments, 3 node/etcd unreachable"""
_REQUIRED = {
    "primary": ("data",),
    "replica": ("data", "primary"),
    "node": ("data", "id", "etcd"),
    "cluster": ("data",),
}


def _node_arg(text: str) -> str:
    try:
        parse_node(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.config_type = int  # type: ignore[attr-defined]  # TOML type (kevo_repl.config)
    return parse


def _port_type(low: int) -> Callable[[str], int]:
    """A port P with P+1 also a port (ROUTER); ``low`` 0 allows "none"."""

    def parse(text: str) -> int:
        value = _count(low)(text)
        if value > 65534:
            raise argparse.ArgumentTypeError(f"must be a port below 65535, got {value}")
        return value

    parse.config_type = int  # type: ignore[attr-defined]
    return parse


_port = _port_type(1)


def _logging_flags(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--log-level", choices=_LEVELS, default=default, help="or $KEVO_LOG_LEVEL")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default=default)


def _serving_flags(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--data", type=Path, help="data directory (required)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=port, help="PUB port; ROUTER is port+1")
    p.add_argument("--advertise", default="", help="HOST:PORT others reach this node at")
    p.add_argument("--metrics-port", type=_port_type(0), default=0, help="serve Prometheus metrics")
    p.add_argument(
        "--keys", type=Path, default=None, help="CURVE: key dir with authorized_keys (see keygen)"
    )
    p.add_argument(
        "--retention-bytes",
        type=_count(1),
        default=1024 * 1024 * 1024,
        help="WAL kept whatever followers need (the floor)",
    )
    p.add_argument(
        "--retention-max-bytes",
        type=_count(0),
        default=0,
        help="hard WAL cap, whatever followers need (0: 4 x --retention-bytes)",
    )
    p.add_argument("--segment-bytes", type=_count(0), default=0, help="0: derived")
    p.add_argument(
        "--sync-replicas",
        type=_count(0),
        default=0,
        help="as a primary: every write waits until this many followers applied it",
    )
    p.add_argument(
        "--sync-timeout-ms",
        type=_count(1),
        default=1000,
        help="how long such a wait lasts, for writes that give no timeout of their own",
    )
    p.add_argument(
        "--sync-refuse",
        action="store_true",
        help="refuse writes (nothing written) while fewer followers are connected",
    )
    p.add_argument(
        "--forget-after-s",
        type=_count(1),
        default=3600,
        help="a follower silent this long leaves the status list (and its WAL hold) by itself",
    )
    p.add_argument(
        "--pub-hwm", type=_count(1), default=256, help="stream frames queued per subscriber"
    )


def _compression_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compression",
        choices=("auto", "zstd", "none"),
        default="auto",
        help="what crosses the link from the upstream (auto: zstd unless it is on loopback)",
    )


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file of flags; flags given here win")
    p.add_argument("--print-config", action="store_true", help="print the settings and exit")


def _node_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--node", required=required, type=_node_arg, help="HOST:PORT (the PUB port)")
    p.add_argument(
        "--request-timeout-ms", type=_count(1), default=5000, help="give up on a silent node"
    )
    p.add_argument("--keys", type=Path, default=None, help="CURVE: directory of key files")
    p.add_argument("--key-name", default="client", help="CURVE: use KEYS/NAME.key_secret")
    p.add_argument(
        "--server-key",
        type=Path,
        default=None,
        help="CURVE: the node's public key file (default KEYS/primary.key)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subparsers by command name (the config file checks keys on them)."""
    p = argparse.ArgumentParser(
        prog="kevo-repl",
        description="WAL replication for a key-value store over ZeroMQ: run nodes, talk to them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _logging_flags(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        _logging_flags(c, argparse.SUPPRESS)
        subs[name] = c
        return c

    pr = add("primary", "run a primary in the foreground")
    _serving_flags(pr, 7100)
    pr.add_argument("--id", default="primary", help="node id shown in status and logs")
    pr.add_argument("--fsync", choices=["always", "interval", "none"], default="always")
    pr.add_argument("--key-name", default="primary", help="CURVE: use KEYS/NAME.key_secret")
    pr.add_argument(
        "--max-waiting-writes",
        type=_count(1),
        default=100_000,
        help="writes that may wait for replicas at once; more are refused",
    )
    _config_flags(pr)

    rp = add("replica", "run a replica in the foreground")
    _serving_flags(rp, 7110)
    rp.add_argument("--primary", type=_node_arg, help="HOST:PORT of the primary (required)")
    rp.add_argument("--id", default="", help="replica id (default replica-PORT)")
    rp.add_argument("--no-bootstrap", action="store_true", help="refuse instead of bootstrapping")
    rp.add_argument(
        "--reinit",
        "--allow-unrelated-history",
        action="store_true",
        help="replace this replica's data if its primary's history is unrelated (or behind it)",
    )
    rp.add_argument("--heartbeat-ms", type=_count(1), default=300)
    rp.add_argument(
        "--lazy-sync-ms",
        type=_count(1),
        default=10,
        help="while no write on the primary waits for acks, fdatasync and ack this often",
    )
    rp.add_argument("--bootstrap-chunk-bytes", type=_count(1), default=256 * 1024)
    _compression_flag(rp)
    rp.add_argument(
        "--primary-key", type=Path, default=None, help="CURVE: default KEYS/primary.key"
    )
    _config_flags(rp)

    nd = add("node", "run a member of a group whose leader is chosen through etcd")
    _serving_flags(nd, 7100)
    member_flags(nd, _count(1))
    _compression_flag(nd)
    _config_flags(nd)

    cl = add("cluster", "a primary and N replicas (--failover: etcd and N members) as children")
    cl.add_argument("--data", type=Path, help="data directory (required)")
    cl.add_argument("--replicas", type=_count(0), default=2)
    cl.add_argument("--port", type=_port, default=7100, help="primary on P, replica i on P+10i")
    cl.add_argument("--restart", action="store_true", help="restart crashed children")
    cl.add_argument(
        "--metrics-port", type=_port_type(0), default=0, help="primary M, replica i M+i"
    )
    failover_cluster_flags(cl, _count(1))
    _config_flags(cl)

    dm = add("demo", "cluster + demo data + proof that replicas match")
    dm.add_argument("--data", type=Path, default=Path("data/demo"))
    dm.add_argument("--replicas", type=_count(0), default=2)
    dm.add_argument("--port", type=_port, default=7100)
    dm.add_argument("--count", type=_count(1), default=20_000, help="demo keys to write")
    dm.add_argument("--exit", action="store_true", help="stop after showing replication")

    for name, text in (("put", "write KEY=VALUE"), ("delete", "delete KEY")):
        c = add(name, f"{text}; prints the committed LSN")
        _node_flags(c)
        c.add_argument("key", help=f"up to {DEFAULT_LIMITS.max_key_bytes} bytes")
        if name == "put":
            c.add_argument("value", nargs="?", help=f"up to {DEFAULT_LIMITS.max_value_bytes} bytes")
            c.add_argument(
                "--value-file",
                type=Path,
                help="read the value from a file, or - for stdin (argv caps values near 128 KB)",
            )
        c.add_argument("--wait-replicas", type=_count(0), default=0)
        c.add_argument("--timeout-ms", type=_count(0), default=0, help="for --wait-replicas")
        c.add_argument(
            "--wait-anyway",
            action="store_true",
            help="wait for more replicas than the primary knows of (they may still join)",
        )

    g = add("get", "print KEY's value; exit 1 if absent")
    _node_flags(g)
    g.add_argument("key")
    g.add_argument("--min-lsn", type=_count(0), default=0, help="wait until applied")
    g.add_argument("--timeout-ms", type=_count(0), default=0, help="for --min-lsn")

    ld = add("load", "load key<TAB>value lines in batches; prints the last LSN")
    _node_flags(ld)
    ld.add_argument("file", nargs="?", default="-", help="a file, or - for stdin (default)")
    ld.add_argument("--batch", type=_count(1), default=1000, help="entries per batch")
    ld.add_argument(
        "--retry-s",
        type=_count(0),
        default=0,
        metavar="S",
        help="if the primary stops answering, wait up to S seconds for it (or a new primary "
        "it names) and resend from the first unconfirmed batch; batches that did commit are "
        "answered, not written again (default 0: stop, exit 3, naming the line to resume at)",
    )

    st = add("status", "a node's role, LSNs and replicas; or, with --etcd, a whole group's")
    _node_flags(st, required=False)
    status_flags(st)

    dg = add("digest", "LSN, key count and SHA-256 of the state, from one read")
    _node_flags(dg)
    dg.add_argument("--json", action="store_true")

    tl = add("tail", "follow a node's replication stream, from an LSN, the last N or a time")
    _node_flags(tl)
    tail_flags(tl)

    lg = add("logs", "follow the local cluster's node logs, merged in time order")
    lg.add_argument("--data", type=Path, required=True, help="the cluster's --data directory")
    lg.add_argument("--node", action="append", default=[], help="only this node (repeatable)")
    lg.add_argument("--level", choices=_LEVELS, default="debug", help="this level and above")
    lg.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True)
    lg.add_argument("--format", choices=["text", "json"], default="text")
    lg.add_argument("--lines", type=_count(0), default=0, help="only the last N lines first")

    pm = add("promote", "a replica stops following and becomes a primary (a new history)")
    _node_flags(pm)
    pm.add_argument("--force", action="store_true", help="even if its upstream still answers")
    pm.add_argument("--json", action="store_true")

    rpt = add("repoint", "a node follows another node from its current position")
    _node_flags(rpt)
    rpt.add_argument("--primary", required=True, type=_node_arg, help="HOST:PORT to follow")

    sc = add("scan", "keys and values in key order, from one consistent snapshot")
    _node_flags(sc)
    sc.add_argument("--prefix", default="", help="only keys starting with this")
    sc.add_argument("--limit", type=_count(1), default=None, help="at most this many pairs")
    sc.add_argument("--format", choices=["text", "json"], default="text")
    sc.add_argument("--chunk-bytes", type=_count(4096), default=256 * 1024, help=argparse.SUPPRESS)

    bk = add("backup", "a consistent copy of a node into a new directory (no pause of writes)")
    _node_flags(bk)
    bk.add_argument("--out", type=Path, required=True, help="a new directory for the backup")
    bk.add_argument("--progress", action="store_true", help="a progress line on stderr")
    bk.add_argument("--json", action="store_true", help="print the manifest as JSON")

    rs = add("restore", "a backup into a new data directory, to start as a replica or primary")
    rs.add_argument("--from", dest="source", type=Path, required=True, help="the backup")
    rs.add_argument("--data", type=Path, required=True, help="a new data directory")
    rs.add_argument(
        "--new-history",
        action="store_true",
        help="fork a history of its own at the backup's LSN, to run it as a primary",
    )

    fg = add("forget", "remove a departed follower from a node's list (and its WAL hold)")
    _node_flags(fg)
    fg.add_argument("--replica", required=True, help="the follower's id, as status lists it")

    sw = add("switchover", "a planned handover from a primary to a replica (--node or --etcd)")
    _node_flags(sw, required=False)
    switchover_flags(sw, _count(1))

    bn = add("bench", "benchmarks side by side with Redis (runs bench/ of the source tree)")
    bn.add_argument("bench_args", nargs=argparse.REMAINDER, help="see: kevo-repl bench --help")

    kg = add("keygen", "write a CURVE key pair: DIR/NAME.key and DIR/NAME.key_secret (0600)")
    kg.add_argument("--out", type=Path, required=True, help="directory for the key files")
    kg.add_argument("name", help="key name: 'primary', a replica id, or a client name")
    return p, subs


def _parse(
    argv: Sequence[str] | None,
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    sub = subs[args.command]
    if args.command == "put" and (args.value is None) == (args.value_file is None):
        sub.error("put needs a VALUE or --value-file F (- for stdin), exactly one of them")
    if args.command == "tail" and (why := tail_misuse(args)):
        sub.error(why)
    if args.command in ("status", "switchover") and (misuse := node_or_etcd_misuse(args)):
        sub.error(misuse)
    if args.command in CONFIGURABLE_COMMANDS and args.config is not None:
        try:
            sub.set_defaults(**config_defaults(args.config, args.command, subs))
        except ConfigError as exc:
            sub.error(str(exc))
        args = parser.parse_args(argv)
    for name in _REQUIRED.get(args.command, ()):
        if getattr(args, name) is None:
            sub.error(f"--{name} is required (on the command line or in --config)")
    return args, sub


def main(argv: Sequence[str] | None = None) -> int:
    args, sub = _parse(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        sub.error(str(exc))
    from kevo_repl.commands import COMMANDS

    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:  # found only once the node answered: still bad arguments
        sub.error(str(exc))
    except (UnreachableError, UnresolvableHostError) as exc:
        _say(str(exc))
        return EXIT_UNREACHABLE
    except (RemoteError, KevoError) as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _say(message: str) -> None:
    print(f"kevo-repl: {message}", file=sys.stderr)


def _quiet_stdout() -> None:
    """After a closed pipe (``| head``), keep Python from complaining at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
