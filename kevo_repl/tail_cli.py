"""``kevo-repl tail`` on the command line: its flags, their checks, and the printing loop.

The start flags follow kcat's offsets (``-o N``, ``-o -N``, ``-o s@TIME``): ``--from-lsn N``
from an LSN, ``--from-lsn -N`` the last N entries, ``--from-time`` the first entry committed
at or after a time; ``--until-lsn`` makes a tail end (exit 0), so a script can take a range.
Misuse exits 2 with usage like any bad argument, including an ``--until-lsn`` that only the
node's answer shows to lie below the start (``UsageError``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from kevo_repl.adapters.security import ClientCurve
from kevo_repl.logs import get_logger
from kevo_repl.tail_start import TIME_FORMAT, TailStart, parse_time

__all__ = ["run_tail", "tail_flags", "tail_misuse", "tail_start"]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _from_lsn(text: str) -> int:
    value = _integer(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            "expected an LSN (1 or more) or -N (the last N entries), got 0"
        )
    return value


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _time(text: str) -> str:
    """Checked here (a bad time is a usage error), kept as written for the notes."""
    try:
        parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def tail_flags(p: argparse.ArgumentParser) -> None:
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-lsn",
        type=_from_lsn,
        default=None,
        metavar="N",
        help="catch up from LSN N; -N: the last N entries (from the first LSN the WAL "
        "retains if it holds fewer, with a note)",
    )
    start.add_argument(
        "--from-time",
        type=_time,
        default=None,
        metavar="TIME",
        help=f"from the first entry committed at or after TIME ({TIME_FORMAT}; a time "
        "without an offset is UTC); looked up on the node. Before what the WAL retains: "
        "from its first LSN, with a note; after the last commit: new entries only",
    )
    p.add_argument(
        "--until-lsn",
        type=_positive,
        default=None,
        metavar="L",
        help="exit 0 after showing the entry with LSN L; L below the start is an error",
    )
    p.add_argument("--count", type=_positive, default=None, help="exit after N entries")
    p.add_argument("--format", choices=["text", "json"], default="text")


def tail_misuse(args: argparse.Namespace) -> str:
    """Why the flags cannot work together ("" if they can), known before asking the node."""
    if args.until_lsn is not None and args.from_lsn is not None and args.until_lsn < args.from_lsn:
        return (
            f"--until-lsn {args.until_lsn} is below --from-lsn {args.from_lsn}: "
            "the tail would start past it"
        )
    return ""


def tail_start(args: argparse.Namespace) -> TailStart:
    if args.from_time is not None:
        return TailStart(time_us=parse_time(args.from_time), time_text=args.from_time)
    if args.from_lsn is not None and args.from_lsn < 0:
        return TailStart(last=-args.from_lsn)
    return TailStart(lsn=args.from_lsn)


def _note(message: str) -> None:
    print(f"kevo-repl: {message}", file=sys.stderr, flush=True)


def run_tail(args: argparse.Namespace) -> int:
    from kevo_repl.tail import StreamTail, entry_json, entry_text

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    fmt = (lambda e: json.dumps(entry_json(e))) if args.format == "json" else entry_text
    curve = ClientCurve.from_dir(args.keys, args.key_name, args.server_key) if args.keys else None
    tail = StreamTail(args.node, timeout_ms=args.request_timeout_ms, curve=curve, note=_note)
    shown = last = 0
    entries = tail.entries(tail_start(args), until_lsn=args.until_lsn)
    try:
        for entry in entries:
            print(fmt(entry))
            shown, last = shown + 1, entry.lsn
            if args.count is not None and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        entries.close()
        get_logger(node=args.node, role="tail").debug(
            "tail_done", entries=shown, lsn=last, **asdict(tail.stats)
        )
    return 0
