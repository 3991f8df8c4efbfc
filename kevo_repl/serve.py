"""``kevo-repl primary`` / ``replica`` / ``cluster``: build the node from flags, run it.

This is where a node object is created, so it is also where its metrics collector is
registered (``--metrics-port``) and where SIGINT/SIGTERM are turned into a clean stop: the
node finishes its turn, flushes, closes its sockets, and the process exits 0.
``--print-config`` shows the settings a command would run with (flags over config file over
defaults) and exits, so an operator can check a config file without starting anything.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kevo_repl.client import parse_node
from kevo_repl.core.errors import KevoError, UsageError

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["run_cluster_command", "run_member", "run_primary", "run_replica", "settings"]

_NOT_SETTINGS = frozenset({"command", "config", "print_config", "func"})


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The effective settings of a serving command, JSON-ready."""
    out: dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if key in _NOT_SETTINGS:
            continue
        out[key.replace("_", "-")] = str(value) if isinstance(value, Path) else value
    return out


def _print_settings(args: argparse.Namespace) -> int:
    print(json.dumps({"command": args.command, **settings(args)}, indent=2))
    return 0


def _run_node(
    node: Node,
    host: str,
    metrics_port: int,
    failed_start: Callable[[BaseException], None],
) -> int:
    server = None
    if metrics_port:  # prometheus_client only when metrics are served (2.8 MiB of RSS)
        from kevo_repl.metrics import NodeCollector, serve_metrics

        try:
            server = serve_metrics(NodeCollector(node), host, metrics_port)
        except OSError as exc:
            node.close()
            failed_start(exc)
            raise KevoError(f"cannot serve metrics on {host}:{metrics_port}: {exc}") from None
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    try:
        node.run()
    except Exception as exc:  # a bug: say so in the log and on stderr, exit non-zero
        node.log.critical("node_crashed", error=repr(exc), exc_info=True)
        raise KevoError(f"the node stopped on an unexpected error: {exc!r} (see its log)") from None
    finally:
        if server is not None:
            server.close()
    if node.failure:
        raise KevoError(f"the node stopped: {node.failure}")
    return 0


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """Settings every node has: where it serves, its WAL's bounds, its keys."""
    return {
        "data_dir": args.data,
        "bind": args.bind,
        "port": args.port,
        "advertise": args.advertise,
        "retention_bytes": args.retention_bytes,
        "retention_max_bytes": args.retention_max_bytes,
        "segment_bytes": args.segment_bytes,
        "pub_hwm": args.pub_hwm,
        "keys_dir": args.keys,
        "forget_after_ms": args.forget_after_s * 1000,
        "sync_replicas": args.sync_replicas,
        "sync_timeout_ms": args.sync_timeout_ms,
        "sync_refuse": args.sync_refuse,
    }


def run_primary(args: argparse.Namespace) -> int:
    if args.print_config:
        return _print_settings(args)
    from kevo_repl.backup import check_not_a_backup

    check_not_a_backup(args.data)
    from kevo_repl.node.config import NodeConfig

    config = NodeConfig(
        **_common(args),
        node_id=args.id,
        fsync=args.fsync,
        max_waiting_writes=args.max_waiting_writes,
        key_name=args.key_name,
    )
    return _run(config, args)


def run_replica(args: argparse.Namespace) -> int:
    if args.print_config:
        return _print_settings(args)
    from kevo_repl.node.config import NodeConfig

    parse_node(args.primary)
    config = NodeConfig(
        **_common(args),
        node_id=args.id or f"replica-{args.port}",
        upstream=args.primary,
        allow_bootstrap=not args.no_bootstrap,
        allow_unrelated_history=args.reinit,
        heartbeat_interval_ms=args.heartbeat_ms,
        lazy_sync_ms=args.lazy_sync_ms,
        compression=args.compression,
        bootstrap_chunk_bytes=args.bootstrap_chunk_bytes,
        upstream_key=args.primary_key,
    )
    return _run(config, args)


def run_member(args: argparse.Namespace) -> int:
    """``node``: ask etcd what to be (``kevo_repl/ha/agent.py``), then run the node with its
    agent beside it; on the way out the agent revokes its lease, so no TTL is waited for."""
    if args.print_config:
        return _print_settings(args)
    from kevo_repl.adapters.etcd_kv import EtcdKV
    from kevo_repl.backup import check_not_a_backup
    from kevo_repl.ha.agent import Agent
    from kevo_repl.ha.scope import ScopeKeys
    from kevo_repl.logs import get_logger
    from kevo_repl.node.config import NodeConfig

    check_not_a_backup(args.data)
    try:
        kv = EtcdKV(args.etcd, timeout_s=min(1.0, args.ttl_s / 6))
    except ValueError as exc:
        raise KevoError(str(exc)) from None
    address = args.advertise or f"{args.bind}:{args.port}"
    log = get_logger(node=args.id, role="agent")
    agent = Agent(kv, ScopeKeys(args.scope), args.id, address, args.ttl_s,
                  args.max_lag_on_failover, log)  # fmt: skip
    upstream, holds_key = agent.join(args.data)
    config = NodeConfig(
        **_common(args),
        node_id=args.id,
        upstream=upstream,
        fsync=args.fsync,
        compression=args.compression,
    )
    try:
        return _run(config, args, agent.start, holds_key)
    finally:
        agent.close()


def _run(
    config: Any,
    args: argparse.Namespace,
    attach: Callable[[Any, bool], None] | None = None,
    holds_key: bool = False,
) -> int:
    from kevo_repl.adapters.datadir import StartLeftovers
    from kevo_repl.node.node import Node

    leftovers = StartLeftovers(config.data_dir)  # a failed start leaves the dir as it was
    try:
        node = Node(config)
    except BaseException as exc:
        leftovers.remove(exc)
        raise
    if attach is not None:
        attach(node, holds_key)
    return _run_node(node, args.bind, args.metrics_port, leftovers.remove)


def run_cluster_command(args: argparse.Namespace) -> int:
    if args.print_config:
        return _print_settings(args)
    node_args: list[str] = []
    if getattr(args, "log_level", None):
        node_args += ["--log-level", args.log_level]
    if args.failover:
        from kevo_repl.cluster_failover import run_failover_cluster
        from kevo_repl.ha.flags import DEFAULT_MEMBERS, DEFAULT_TTL_S

        return run_failover_cluster(
            args.data,
            args.members or DEFAULT_MEMBERS,
            args.port,
            ttl_s=args.ttl_s or DEFAULT_TTL_S,
            restart=args.restart,
            metrics_port=args.metrics_port,
            node_args=node_args,
        )
    if args.members is not None or args.ttl_s is not None:
        raise UsageError("--members and --ttl-s are for --failover (a fixed primary: --replicas)")
    from kevo_repl.cluster import run_cluster

    return run_cluster(
        args.data,
        args.replicas,
        args.port,
        restart=args.restart,
        metrics_port=args.metrics_port,
        node_args=node_args,
    )
