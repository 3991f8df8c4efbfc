"""``kevo-repl``: run nodes and talk to them.

Exit codes: 0 success, 1 a key is absent or the node refused, 2 bad arguments (argparse),
3 the node could not be reached in time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from kevo_repl.client import Client, NodeUnreachableError, RemoteError, parse_node
from kevo_repl.core.errors import KevoError
from kevo_repl.logs import configure_logging

__all__ = ["main"]

EXIT_ABSENT = 1
EXIT_UNREACHABLE = 3


def _node_arg(text: str) -> str:
    try:
        parse_node(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kevo-repl", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")
    p.add_argument("--log-format", default=None, choices=["auto", "json", "console"])
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("primary", help="run a primary in the foreground")
    pr.add_argument("--data", required=True, type=Path)
    pr.add_argument("--bind", default="127.0.0.1")
    pr.add_argument("--port", type=int, default=7100)
    pr.add_argument("--fsync", choices=["always", "interval", "none"], default="always")
    pr.add_argument("--retention-bytes", type=int, default=1024 * 1024 * 1024)
    pr.add_argument("--segment-bytes", type=int, default=0)
    pr.add_argument("--pub-hwm", type=int, default=10_000)
    pr.add_argument("--advertise", default="", help="HOST:PORT others reach this node at")

    rp = sub.add_parser("replica", help="run a replica in the foreground")
    rp.add_argument("--data", required=True, type=Path)
    rp.add_argument("--primary", required=True, type=_node_arg)
    rp.add_argument("--id", default="")
    rp.add_argument("--bind", default="127.0.0.1")
    rp.add_argument("--port", type=int, default=7110)
    rp.add_argument("--advertise", default="")
    rp.add_argument("--no-bootstrap", action="store_true", help="refuse instead of bootstrapping")
    rp.add_argument("--heartbeat-ms", type=int, default=300)
    rp.add_argument("--bootstrap-chunk-bytes", type=int, default=256 * 1024)

    cl = sub.add_parser("cluster", help="a primary and N replicas as child processes")
    cl.add_argument("--data", required=True, type=Path)
    cl.add_argument("--replicas", type=int, default=2)
    cl.add_argument("--port", type=int, default=7100)
    cl.add_argument("--restart", action="store_true", help="restart crashed children")

    dm = sub.add_parser("demo", help="cluster + demo data + proof that replicas match")
    dm.add_argument("--data", type=Path, default=Path("data/demo"))
    dm.add_argument("--replicas", type=int, default=2)
    dm.add_argument("--port", type=int, default=7100)
    dm.add_argument("--keys", type=int, default=20_000)
    dm.add_argument("--exit", action="store_true", help="stop after showing replication")

    for name in ("put", "delete", "get", "status", "digest"):
        c = sub.add_parser(name)
        c.add_argument("--node", required=True, type=_node_arg)
        c.add_argument("--timeout-ms", type=int, default=0)
        if name in ("put", "delete", "get"):
            c.add_argument("key")
        if name == "put":
            c.add_argument("value")
        if name in ("put", "delete"):
            c.add_argument("--wait-replicas", type=int, default=0)
        if name == "get":
            c.add_argument("--min-lsn", type=int, default=0)
        if name in ("status", "digest"):
            c.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"kevo-repl: {exc}", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args)
    except NodeUnreachableError as exc:
        print(f"kevo-repl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RemoteError as exc:
        print(f"kevo-repl: {exc}", file=sys.stderr)
        return 1
    except KevoError as exc:
        print(f"kevo-repl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run_node(node: object) -> int:
    stop = node.stop  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, lambda *_: stop())
    signal.signal(signal.SIGTERM, lambda *_: stop())
    node.run()  # type: ignore[attr-defined]
    return 0


def _primary(args: argparse.Namespace) -> int:
    from kevo_repl.node.primary_node import PrimaryConfig, PrimaryNode

    config = PrimaryConfig(
        data_dir=args.data,
        bind=args.bind,
        port=args.port,
        fsync=args.fsync,
        retention_bytes=args.retention_bytes,
        segment_bytes=args.segment_bytes,
        pub_hwm=args.pub_hwm,
        advertise=args.advertise,
    )
    return _run_node(PrimaryNode(config))


def _replica(args: argparse.Namespace) -> int:
    from kevo_repl.node.replica_node import ReplicaConfig, ReplicaNode

    host, port = parse_node(args.primary)
    config = ReplicaConfig(
        data_dir=args.data,
        primary_host=host,
        primary_port=port,
        replica_id=args.id or f"replica-{args.port}",
        bind=args.bind,
        port=args.port,
        advertise=args.advertise,
        allow_bootstrap=not args.no_bootstrap,
        heartbeat_interval_ms=args.heartbeat_ms,
        bootstrap_chunk_bytes=args.bootstrap_chunk_bytes,
    )
    return _run_node(ReplicaNode(config))


def _client(args: argparse.Namespace) -> Client:
    return Client(args.node, timeout_ms=5000)


def _put(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.put(
            args.key.encode(),
            args.value.encode(),
            wait_replicas=args.wait_replicas,
            timeout_ms=args.timeout_ms,
        )
    _print_write(r.lsn, args.wait_replicas, r.replicas_applied, r.wait_timed_out)
    return 1 if r.wait_timed_out else 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.delete(
            args.key.encode(), wait_replicas=args.wait_replicas, timeout_ms=args.timeout_ms
        )
    _print_write(r.lsn, args.wait_replicas, r.replicas_applied, r.wait_timed_out)
    return 1 if r.wait_timed_out else 0


def _print_write(lsn: int, wanted: int, applied: int, timed_out: bool) -> None:
    print(lsn)
    if wanted:
        note = " (timed out)" if timed_out else ""
        print(f"replicas applied: {applied} of {wanted} requested{note}", file=sys.stderr)


def _get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        value = c.get(args.key.encode(), min_lsn=args.min_lsn, timeout_ms=args.timeout_ms)
    if value is None:
        print(f"kevo-repl: key {args.key!r} not found", file=sys.stderr)
        return EXIT_ABSENT
    sys.stdout.buffer.write(value + b"\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from kevo_repl.status_format import status_json, status_text

    with _client(args) as c:
        s = c.status()
    print(json.dumps(status_json(s)) if args.json else status_text(s))
    return 0


def _digest(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.digest()
    doc = {"lsn": d.lsn, "keys": d.keys, "digest": d.digest}
    print(json.dumps(doc) if args.json else f"lsn={d.lsn} keys={d.keys} digest={d.digest}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from kevo_repl.cluster import run_cluster

    return run_cluster(args.data, args.replicas, args.port, restart=args.restart)


def _demo(args: argparse.Namespace) -> int:
    from kevo_repl.cluster import run_demo

    return run_demo(args.data, args.replicas, args.port, args.keys, exit_after=args.exit)


_COMMANDS = {
    "primary": _primary,
    "replica": _replica,
    "cluster": _cluster,
    "demo": _demo,
    "put": _put,
    "delete": _delete,
    "get": _get,
    "status": _status,
    "digest": _digest,
}
