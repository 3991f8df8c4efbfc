"""``python -m bench`` / ``kevo-repl bench``: kevo-repl and Redis side by side, one run.

    python -m bench throughput --clients 50 --pipeline 16 --requests 1000000 [--json]
    python -m bench lag --rate 5000 --seconds 10 [--json]
    python -m bench fanout --replicas 1,4,8,16 --rate 5000 | fanout --tree 4x16[,4x64] [--netns]
    python -m bench bootstrap --keys 1000000 | catchup --entries 1000000 | memory
    python -m bench redis | zmq --batch 1,16
    python -m bench wan --rtt-ms 40 --rate-mbit 50 [--values json|random|both] (root)
    python -m bench all [--plots docs/img] [--save results.json] [--quick]

Every command starts its own processes on free loopback ports in a temporary directory and
ends them by PID, also on Ctrl-C. ``--json`` prints one JSON object per command.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import redis_bench as rb
from bench import suite, wan_suite
from bench.procinfo import machine_info
from bench.redis_server import INSTALL_HINT, redis_available
from bench.report import add_ratios, render
from bench.wan_net import LinkProfile

__all__ = ["main"]

COMMANDS = ("throughput", "lag", "fanout", "bootstrap", "catchup", "memory", "redis", "zmq")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N[,N...], got {text!r}") from None


def _trees(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (x for x in text.split(",") if x):
        relays, _, leaves = part.lower().partition("x")
        try:
            shape = (int(relays), int(leaves))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected RxL[,RxL...], got {text!r}") from None
        if min(shape) < 1:
            raise argparse.ArgumentTypeError(f"relays and leaves must be >= 1, got {part!r}")
        out.append(shape)
    return out


def _sections(text: str) -> tuple[str, ...]:
    got = tuple(x for x in text.split(",") if x)
    if not got or set(got) - set(wan_suite.SECTIONS):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(wan_suite.SECTIONS)}")
    return got


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON object on stdout")
    common.add_argument("--no-redis", action="store_true", help="skip the Redis rows")
    p = argparse.ArgumentParser(prog="kevo-repl bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    t = add("throughput", "replicated writes/s, C clients x D writes in flight (fsync=always)")
    t.add_argument("--clients", type=int, default=50)
    t.add_argument("--pipeline", type=int, default=16)
    t.add_argument("--requests", type=int, default=1_000_000, help="entries (SETs) in all")
    t.add_argument("--mode", choices=["batch", "inflight"], default="batch")
    t.add_argument("--procs", type=int, default=2, help="load generator processes")
    t.add_argument("--runs", type=int, default=1, help="rounds, each with its own Redis rows")
    lg = add("lag", "commit-to-replica-applied lag at a fixed open-loop rate")
    lg.add_argument("--rate", type=int, default=5000)
    lg.add_argument("--seconds", type=float, default=10)
    f = add("fanout", "lag p99 per replica with R replicas (or a relay tree) at a fixed rate")
    f.add_argument("--replicas", type=_ints, help="flat: R replicas of the primary (1,4,8,16)")
    f.add_argument(
        "--tree", type=_trees, default=[], help="1 primary -> R relays -> L leaves in all: RxL"
    )
    f.add_argument(
        "--listener-procs", type=int, default=0, help="lag listener processes (0: one per node)"
    )
    f.add_argument("--rate", type=int, default=5000)
    f.add_argument("--seconds", type=float, default=10)
    f.add_argument(
        "--netns",
        action="store_true",
        help="kevo's primary, relays and leaves in network namespaces (bench.wan_net, root): "
        "the primary's bytes sent read from its veth",
    )
    f.add_argument(
        "--compression",
        choices=["auto", "zstd", "none"],
        default="auto",
        help="kevo replicas' --compression (auto: zstd off loopback, so in --netns sides)",
    )
    b = add("bootstrap", "a fresh replica of a large dataset: seconds, MB/s, peak RSS")
    b.add_argument("--keys", type=int, default=1_000_000)
    c = add("catchup", "a replica N entries behind: entries/s until it converges")
    c.add_argument("--entries", type=int, default=1_000_000)
    add("memory", "RSS of an idle primary and an idle replica")
    add("redis", "only the Redis rows of every workload")
    w = add("wan", "kevo (per compression mode) and Redis across a WAN profile in namespaces")
    w.add_argument("--rtt-ms", type=float, default=40, help="round trip added between sides")
    w.add_argument("--jitter-ms", type=float, default=0)
    w.add_argument("--rate-mbit", type=float, default=50, help="0: unlimited")
    w.add_argument("--loss-pct", type=float, default=0, help="random loss each way")
    w.add_argument("--seconds", type=float, default=10, help="lag run; throughput size")
    w.add_argument("--values", choices=["json", "random", "both"], default="both")
    w.add_argument("--catchup-entries", type=int, default=1_000_000)
    w.add_argument("--lag-rate", type=int, default=2000, help="single writes/s in the lag run")
    w.add_argument("--only", type=_sections, default=wan_suite.SECTIONS, help="e.g. link,lag")
    w.add_argument("--save", type=Path, help="also write the JSON object to this file")
    z = add("zmq", "the raw pyzmq PUB->SUB limit")
    z.add_argument("--batch", type=_ints, default=[1, 16])
    a = add("all", "every workload (under 15 minutes on 2 cores)")
    a.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    a.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    a.add_argument("--save", type=Path, help="also write the JSON object to this file")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    redis = not args.no_redis
    cmd = args.command
    if cmd == "throughput":
        return suite.throughput(
            args.clients, args.pipeline, args.requests, args.mode, args.procs, redis, args.runs
        )
    if cmd == "lag":
        return suite.lag(args.rate, args.seconds, redis)
    if cmd == "fanout":
        flat = args.replicas if args.replicas is not None else [] if args.tree else [1, 4, 8, 16]
        return suite.fanout(
            flat,
            args.rate,
            args.seconds,
            redis,
            args.tree,
            args.listener_procs,
            args.netns,
            args.compression,
        )
    if cmd == "bootstrap":
        return suite.bootstrap(args.keys, redis)
    if cmd == "catchup":
        return suite.catchup(args.entries, redis)
    if cmd == "memory":
        return suite.memory(redis)
    if cmd == "zmq":
        return suite.zmq_rows(args.batch)
    if cmd == "redis":
        return _redis_only()
    if cmd == "wan":
        profile = LinkProfile(args.rtt_ms, args.jitter_ms, args.rate_mbit, args.loss_pct)
        values = ("json", "random") if args.values == "both" else (args.values,)
        return wan_suite.wan(profile, args.seconds, values, args.catchup_entries,
                             args.lag_rate, redis, args.only)  # fmt: skip
    return _all(args)


def _redis_only() -> dict[str, Any]:
    if not redis_available():
        return {"command": "redis", "sections": {}, "notes": [INSTALL_HINT]}
    sections = {
        "throughput": suite.result(
            "throughput",
            [
                rb.redis_throughput(aof, 50, d, n)
                for d, n in ((1, 200_000), (16, 1_000_000))
                for aof in (True, False)
            ],
        ),
        "lag": suite.result("lag", [rb.redis_lag(aof, 5000, 10) for aof in (True, False)]),
        "fanout": suite.result(
            "fanout", [rb.redis_fanout(True, r, 5000, 10) for r in (1, 4, 8, 16)]
        ),
        "bootstrap": suite.result("bootstrap", [rb.redis_full_sync(True, 1_000_000)]),
        "catchup": suite.result("catchup", [rb.redis_partial_resync(True, 1_000_000)]),
        "memory": suite.result("memory", [rb.redis_idle_memory()]),
    }
    return {"command": "redis", "sections": sections}


def _all(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    redis = not args.no_redis
    n1, n16, secs, keys = (20_000, 100_000, 2.0, 100_000) if quick else (
        200_000, 1_000_000, 10.0, 1_000_000
    )  # fmt: skip
    sections: dict[str, Any] = {}
    started = time.monotonic()
    runs = 1 if quick else 3  # a run-to-run range, each round against Redis in that round
    sections["throughput_p1"] = suite.throughput(50, 1, n1, "batch", 2, redis, runs)
    t16 = suite.throughput(50, 16, n16, "batch", 2, redis, runs)
    from bench.replication_bench import run_throughput

    t16["rows"].append(run_throughput(50, 16, n16 // 2, "inflight", 2))
    t16["ratios"] = add_ratios("throughput", t16["rows"])
    sections["throughput_p16"] = t16
    for rate in (1000, 5000, 20000):
        sections[f"lag_{rate}"] = suite.lag(rate, secs, redis, cdf=True)
    sections["fanout"] = suite.fanout([1, 4, 8, 16], 5000, secs, redis)
    sections["bootstrap"] = suite.bootstrap(keys, redis)
    sections["catchup"] = suite.catchup(keys, redis)
    sections["memory"] = suite.memory(redis)
    out: dict[str, Any] = {"command": "all", "sections": sections}
    out["minutes"] = round((time.monotonic() - started) / 60, 1)
    if args.plots:
        from bench.plots import plot_all

        out["plots"] = [str(p) for p in plot_all(sections, args.plots)]
    return out


def _render_any(res: dict[str, Any]) -> str:
    if "sections" not in res:
        return render(res)
    parts = [render(s) for s in res["sections"].values()]
    parts += [f"note: {n}" for n in res.get("notes", [])]
    targets = [t for s in res["sections"].values() for t in s.get("targets", [])]
    if targets:
        lines = ["== targets =="]
        for t in targets:
            lines.append(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
        parts.append("\n".join(lines))
    if "plots" in res:
        parts.append("plots: " + ", ".join(res["plots"]))
    if "minutes" in res:
        parts.append(f"total: {res['minutes']} min")
    return "\n\n".join(parts)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every context manager: processes end, temp dirs go


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m bench`` and ``kevo-repl bench``; returns the exit code."""
    args = build_parser().parse_args(argv)
    load_before = machine_info()["load_avg"]
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        res = _run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was ended", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("bench: failed; every started process was ended", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    res["machine"] = {**machine_info(), "load_avg_before": load_before}
    text = json.dumps(res) if args.json else _render_any(res)
    if getattr(args, "save", None):
        args.save.write_text(json.dumps(res, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
