"""The CLI's commands, one function each: ``args`` in, exit code out, output on stdout.

Results go to stdout (an LSN, a value, a JSON object) so scripts can capture them; notes and
errors go to stderr. Errors are raised (``NodeUnreachableError``, ``RemoteError``,
``KevoError``) and turned into a message and an exit code by ``cli.main``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kevo_repl.adapters.security import ClientCurve, write_keypair
from kevo_repl.client import Client
from kevo_repl.core.errors import KevoError
from kevo_repl.serve import run_cluster_command, run_member, run_primary, run_replica
from kevo_repl.tail_cli import run_tail
from kevo_repl.wire import pb

__all__ = ["COMMANDS"]

EXIT_ABSENT = 1
EXIT_UNREACHABLE = 3


def _curve(args: argparse.Namespace) -> ClientCurve | None:
    """CURVE client keys from ``--keys/--key-name/--server-key`` (None without ``--keys``)."""
    if args.keys is None:
        return None
    return ClientCurve.from_dir(args.keys, args.key_name, args.server_key)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.node, timeout_ms=args.request_timeout_ms, curve=_curve(args))


def _bench(args: argparse.Namespace) -> int:
    """``bench/`` lives in the source tree (it starts Redis, plots, ...), not in the wheel."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "cli.py").exists():
        raise KevoError("kevo-repl bench needs the source tree (bench/); run it from a clone")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.cli import main as bench_main

    return bench_main(args.bench_args)


def _keygen(args: argparse.Namespace) -> int:
    public, secret = write_keypair(args.out, args.name)
    key = public.read_text().split('"')[1]
    print(f"wrote {public} and {secret} (mode 0600)")
    print("to admit it, add a line to authorized_keys:")
    print(f"{key}  <replica|client-rw|client-ro|admin>  {args.name}")
    return 0


def _put(args: argparse.Namespace) -> int:
    value = _value(args)
    with _client(args) as c:
        _check_wait(c, args)
        r = c.put(
            args.key.encode(), value, wait_replicas=args.wait_replicas, timeout_ms=args.timeout_ms
        )
    return _print_write(r.lsn, args.wait_replicas, r.replicas_applied, r.wait_timed_out)


def _value(args: argparse.Namespace) -> bytes:
    """VALUE from argv, or ``--value-file`` (``-``: stdin)."""
    if args.value is not None:  # exactly one of them: checked while parsing
        return str(args.value).encode()
    if str(args.value_file) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.value_file).read_bytes()
    except OSError as exc:
        raise KevoError(f"cannot read --value-file {args.value_file}: {exc.strerror}") from exc


def _check_wait(c: Client, args: argparse.Namespace) -> None:
    """Refuse at once a wait for more replicas than the primary knows: it could only time
    out (``--wait-anyway`` waits all the same, for replicas about to join)."""
    if not args.wait_replicas or args.wait_anyway:
        return
    primary = c.primary_address()
    with c.to(primary) as p:
        known = [r.replica_id for r in p.status_message().replicas]
    if args.wait_replicas > len(known):
        names = f" ({', '.join(known)})" if known else ""
        raise KevoError(
            f"--wait-replicas {args.wait_replicas}, but the primary {primary} knows "
            f"{len(known)} replica{'s' if len(known) != 1 else ''}{names}: the write could "
            "only time out. Pass --wait-anyway to wait for replicas still to join"
        )


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _check_wait(c, args)
        r = c.delete(
            args.key.encode(), wait_replicas=args.wait_replicas, timeout_ms=args.timeout_ms
        )
    if r.deletes_absent:  # still committed (an LSN), as Redis DEL answers 0
        print("deleted (key was absent)", file=sys.stderr)
    return _print_write(r.lsn, args.wait_replicas, r.replicas_applied, r.wait_timed_out)


def _scan(args: argparse.Namespace) -> int:
    from kevo_repl.tail import printable, text_fields

    left = args.limit
    with _client(args) as c:
        chunks = c.snapshot_stream(prefix=args.prefix.encode(), chunk_bytes=args.chunk_bytes)
        try:
            for chunk in chunks:
                for key, value in zip(chunk.keys, chunk.values, strict=True):
                    if args.format == "json":
                        doc = {**text_fields(key=key, value=value), "lsn": chunk.snapshot_lsn}
                        print(json.dumps(doc))
                    else:
                        print(f"{printable(key)}\t{printable(value)}")
                    if left is not None:
                        left -= 1
                        if not left:
                            return 0
        finally:
            chunks.close()  # ends the node's session at once when we stop early
    return 0


def _backup(args: argparse.Namespace) -> int:
    from kevo_repl.backup import backup

    with _client(args) as c:
        manifest = backup(c, args.out, progress=args.progress)
    if args.json:
        print(json.dumps(manifest))
    else:
        print(
            f"backup of {manifest['source']} in {args.out}: {manifest['keys']} keys at LSN "
            f"{manifest['lsn']} of history {manifest['history_id']} ({manifest['seconds']} s)"
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    from kevo_repl.backup import restore

    m = restore(args.source, args.data, args.new_history)
    if args.new_history:
        print(
            f"restored into {args.data} as a primary's data: new history {m['new_history']} "
            f"forked at LSN {m['lsn']}; start it with `kevo-repl primary --data {args.data}`"
        )
    else:
        print(
            f"restored into {args.data} at LSN {m['lsn']}: start it with `kevo-repl replica "
            f"--data {args.data} --primary HOST:P` (it catches up from LSN {m['lsn'] + 1})"
        )
    return 0


def _forget(args: argparse.Namespace) -> int:
    with _client(args) as c:
        resp = c.call(pb.Request(forget=pb.ForgetRequest(replica_id=args.replica))).forget
    print(
        f"forgot {args.replica} (last heard {resp.last_seen_ms / 1000:.1f} s ago, at LSN "
        f"{resp.applied_lsn}); it no longer holds {args.node}'s WAL"
    )
    return 0


def _print_write(lsn: int, wanted: int, applied: int, timed_out: bool) -> int:
    """The LSN on stdout; with --wait-replicas, how many applied it (exit 1 if too few)."""
    print(lsn)
    if wanted or applied or timed_out:  # asked for, or the primary's --sync-replicas
        note = " (timed out)" if timed_out else ""
        of = f" of {wanted} requested" if wanted else " (the primary's policy)"
        print(f"replicas applied: {applied}{of}{note}", file=sys.stderr)
    return 1 if timed_out else 0


def _get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        value = c.get(args.key.encode(), min_lsn=args.min_lsn, timeout_ms=args.timeout_ms)
    if value is None:
        print(f"kevo-repl: key {args.key!r} not found", file=sys.stderr)
        return EXIT_ABSENT
    sys.stdout.buffer.write(value + b"\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.etcd is not None:
        from kevo_repl.ha.group_status import run_group_status

        return run_group_status(args)
    from kevo_repl.status_format import status_json, status_text
    from kevo_repl.watch_view import stamp, watch_live, watch_printed

    def show(s: pb.StatusResponse) -> None:
        if args.json:
            print(json.dumps(status_json(s)), flush=True)
        else:
            head = stamp(args.interval) + "\n" if args.watch else ""
            print(head + status_text(s), flush=True)

    with _client(args) as c:
        s = c.status_message()
        if args.watch and not args.json and sys.stdout.isatty():
            from kevo_repl.status_format import status_renderable

            watch_live(c.status_message, s, status_renderable, args.interval)
        else:
            show(s)
            if args.watch:
                watch_printed(c.status_message, show, args.interval)
    if not args.ready or _is_ready(s):
        return 0
    if args.json or args.watch:
        return 1
    from kevo_repl.node_status import status_name

    why = s.upstream_problem or s.error_message or f"status {status_name(s.status)}"
    print(f"kevo-repl: not ready: {why}", file=sys.stderr)
    return 1


def _is_ready(s: pb.StatusResponse) -> bool:
    return s.role == pb.ROLE_PRIMARY or s.status == pb.STATUS_READY


def _digest(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.digest()
    doc = {"lsn": d.lsn, "keys": d.keys, "digest": d.digest}
    print(json.dumps(doc) if args.json else f"lsn={d.lsn} keys={d.keys} digest={d.digest}")
    return 0


def _load(args: argparse.Namespace) -> int:
    from kevo_repl.load import Progress, load_lines

    stream: BinaryIO
    total: int | None = None
    if args.file == "-":
        stream = sys.stdin.buffer
        if sys.stdin.isatty():
            print("reading key<TAB>value lines from the terminal; Ctrl-D ends", file=sys.stderr)
    else:
        path = Path(args.file)
        try:
            stream = path.open("rb")
            total = path.stat().st_size
        except OSError as exc:
            raise KevoError(f"cannot read {path}: {exc.strerror or exc}") from None
    progress = Progress(sys.stderr, total) if sys.stderr.isatty() else None

    def notice(text: str) -> None:
        print(f"kevo-repl: {text}", file=sys.stderr, flush=True)  # above a bar, if drawn

    started = time.monotonic()
    try:
        result = load_lines(
            args.node,
            stream,
            batch=args.batch,
            timeout_ms=args.request_timeout_ms,
            progress=progress,
            curve=_curve(args),
            retry_s=args.retry_s,
            notice=notice,
        )
    finally:
        if progress is not None:
            progress.close()  # the bar's last state stays on the terminal, error or not
        if stream is not sys.stdin.buffer:
            stream.close()
    elapsed = time.monotonic() - started
    print(result.last_lsn)
    print(
        f"loaded {result.entries} entries in {result.batches} batches"
        f" ({result.entries / max(elapsed, 1e-6):,.0f} entries/s)"
        + ("" if result.entries else "; the input held no entries")
        + (f"; {result.resent} batches resent after an outage" if result.resent else ""),
        file=sys.stderr,
    )
    return 0


def _logs(args: argparse.Namespace) -> int:
    from kevo_repl.logview import LogFollower, run_logs

    log_dir = args.data / "logs"
    if not log_dir.is_dir():
        raise KevoError(f"no logs in {log_dir} (is {args.data} a `kevo-repl cluster --data` dir?)")
    follower = LogFollower(log_dir, frozenset(args.node), args.level)
    try:
        return run_logs(follower, sys.stdout, follow=args.follow, fmt=args.format, last=args.lines)
    except KeyboardInterrupt:
        return 0


def _demo(args: argparse.Namespace) -> int:
    from kevo_repl.cluster import run_demo

    return run_demo(args.data, args.replicas, args.port, args.count, exit_after=args.exit)


def _failover(name: str, args: argparse.Namespace) -> int:
    if name == "switchover_command" and args.etcd is not None:  # through the group's leader
        from kevo_repl.ha.switchover_cli import run_switchover

        return run_switchover(args)
    from kevo_repl import failover

    command: Callable[[argparse.Namespace], int] = getattr(failover, name)
    return command(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "primary": run_primary,
    "replica": run_replica,
    "node": run_member,
    "cluster": run_cluster_command,
    "demo": _demo,
    "put": _put,
    "delete": _delete,
    "get": _get,
    "load": _load,
    "status": _status,
    "digest": _digest,
    "tail": run_tail,
    "logs": _logs,
    "keygen": _keygen,
    "promote": lambda a: _failover("promote_command", a),
    "repoint": lambda a: _failover("repoint_command", a),
    "switchover": lambda a: _failover("switchover_command", a),
    "forget": _forget,
    "scan": _scan,
    "backup": _backup,
    "restore": _restore,
    "bench": _bench,
}
