"""Soak: random process faults under a steady fsync=always write load, then a report.

    python -m bench.soak [--seconds 600] [--seed N] [--replicas 2] [--out bench/results]
    python -m bench.soak --failover [--faults 20]   (bench/soak_failover.py)
    make soak SOAK_ARGS="--seconds 120"

One primary and N replicas (real processes on loopback), one writer recording every write's
outcome (``tests/faults/load.py``: every third write overwrites a hot key, so a batch applied
out of order or twice changes the state), an ``LsnMonitor`` sampling Status. Faults are
drawn (seeded, each printed) from ``tests/faults/injector.py``: SIGKILL/SIGSTOP/restart of
the primary and the replicas, freezes past the heartbeat and primary timeouts, a power loss
of the primary (its WAL cut at the last fdatasync, sometimes its store damaged too), a big
write (three 3 MiB values: by WalSync only), and a subscriber that never reads (the primary's
memory must stay within the PUB budget). After each
fault the replicas must apply what the primary had committed (timed: the fault's
convergence); every ``--quiesce-every`` faults the load pauses and the replicas must be
digest-equal to the primary. At the end: every key is read back from every node and must
hold its last acknowledged write (or a later one whose outcome is unknown), no write was
refused, the applied LSN never went backwards, and bootstraps must be zero (the WAL covers
every outage here).

Writes ``soak-last.json`` and ``soak-last.md`` under ``--out``; exit 0 only if every
invariant held.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kevo_repl.node.local_state import SYNC_LOG_ENV
from tests.faults.checkers import LsnMonitor, count_events, verify_acked, wait_converged
from tests.faults.injector import FAULT_KINDS, POWER_FAULT_KINDS, FaultRun
from tests.faults.load import Writer
from tests.nodes import Cluster, wait_for

__all__ = ["main", "soak"]


def soak(seconds: float, seed: int, replicas: int, quiesce_every: int) -> dict[str, Any]:
    """Run the soak in a temp dir; returns the report (``ok`` says if invariants held)."""
    started = time.monotonic()
    report: dict[str, Any] = {"seed": seed, "seconds_planned": seconds, "replicas": replicas}
    failures: list[str] = []
    quiescent: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kevo-soak-") as tmp:
        cluster = Cluster(Path(tmp))
        writer: Writer | None = None
        monitor: LsnMonitor | None = None
        run: FaultRun | None = None
        sync_log = Path(tmp) / "primary-syncs"  # for the power-loss faults
        try:
            env = {SYNC_LOG_ENV: str(sync_log)}
            primary = cluster.primary("primary", "--fsync", "always", env=env)
            nodes = [cluster.replica(f"r{i}", primary) for i in range(replicas)]
            writer = Writer(primary.address, max_writes=50_000_000, max_seconds=seconds + 120)
            monitor = LsnMonitor(primary, nodes, interval_s=0.1).start()
            writer.start()
            w = writer
            wait_for("load running", lambda: len(w.acked) > 100)
            kinds = {**FAULT_KINDS, **POWER_FAULT_KINDS}
            run = FaultRun(cluster, primary, nodes, writer, monitor, seed, kinds, sync_log=sync_log)
            while time.monotonic() - started < seconds:
                run.random_fault()
                if len(run.faults) % quiesce_every == 0:
                    writer.pause()
                    quiescent.append(round(wait_converged(primary, nodes, 120), 3))
                    writer.resume()
            writer.stop()
            failures += [f"writer failed: {e!r}" for e in writer.errors]
            quiescent.append(round(wait_converged(primary, nodes, 120), 3))
            log = writer.acked
            expected = {**log.expected(), **run.side_log.expected()}
            verified = {n.name: verify_acked(n, expected) for n in [primary, *nodes]}
            failures += run.problems
            monitor.stop()
            failures += [f"applied LSN went backwards: {v}" for v in monitor.violations]
            boots = {n.name: count_events(n.log_path, "bootstrap_start") for n in nodes}
            if sum(boots.values()):
                failures.append(f"unexpected bootstraps: {boots}")
            if log.refused:  # no fault here gives the primary a reason to refuse a put
                failures.append(f"{log.refused} writes refused")
            totals = monitor.totals()
            report.update(
                writes_acknowledged=len(log),
                keys_verified=min(verified.values()),
                keys_verified_per_node=verified,
                hot_keys=writer.hot_keys,
                writes_unknown_outcome=log.unknown,
                writes_refused=log.refused,
                bootstraps=boots,
                catchups={rid: c for rid, (_, c) in totals.items()},
                status_samples=monitor.samples,
            )
        except (AssertionError, Exception) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            report["node_logs"] = list(cluster.logs())
        finally:
            if writer is not None:
                writer.stop()
            if monitor is not None:
                monitor.stop()
            cluster.close()
    faults = run.faults if run is not None else []
    per_fault = max((f["convergence_s"] for f in faults), default=0.0)
    report.update(
        seconds_run=round(time.monotonic() - started, 1),
        faults_injected=len(faults),
        faults_by_kind=dict(Counter(f["kind"] for f in faults)),
        longest_convergence_s=max([per_fault, *quiescent]),
        longest_catch_up_after_fault_s=per_fault,
        longest_quiescent_convergence_s=max(quiescent, default=0.0),
        faults=faults,
        failures=failures,
        ok=not failures,
    )
    return report


def markdown(report: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report["faults_by_kind"].items()))
    lines = [
        f"# Soak report (seed {report['seed']})",
        "",
        "| figure | value |",
        "|---|---|",
        f"| result | {'all invariants held' if report['ok'] else 'FAILED'} |",
        f"| duration | {report['seconds_run']} s, {report['replicas']} replicas, fsync=always |",
        f"| faults injected | {report['faults_injected']} ({kinds}) |",
        f"| writes acknowledged | {report.get('writes_acknowledged', '-')} |",
        f"| keys verified (on every node; every 3rd write overwrites one of "
        f"{report.get('hot_keys', '-')} hot keys) | {report.get('keys_verified', '-')} |",
        f"| writes with unknown outcome (cut by a kill) | "
        f"{report.get('writes_unknown_outcome', '-')} |",
        f"| writes refused | {report.get('writes_refused', '-')} |",
        f"| bootstraps | {report.get('bootstraps', '-')} |",
        f"| catch-ups (WalSync served, summed over primary restarts) | "
        f"{report.get('catchups', '-')} |",
        f"| longest convergence | {report['longest_convergence_s']} s |",
        f"| status samples (LSN never backwards) | {report.get('status_samples', '-')} |",
    ]
    if report["failures"]:
        lines += ["", "## Failures", "", *[f"- {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--quiesce-every", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--failover",
        action="store_true",
        help="instead: leader kills, pauses and partitions of an etcd group "
        "(bench/soak_failover.py)",
    )
    p.add_argument("--faults", type=int, default=20, help="with --failover: how many")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if args.failover:
        from bench.soak_failover import markdown as failover_markdown
        from bench.soak_failover import soak_failover

        print(f"failover soak: {args.faults} faults, seed {seed}", flush=True)
        report = soak_failover(args.faults, seed, keep_logs=args.out / "soak-failover-logs")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak-failover-last.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "soak-failover-last.md").write_text(failover_markdown(report))
        print(failover_markdown(report))
        return 0 if report["ok"] else 1
    print(f"soak: {args.seconds:.0f} s, seed {seed}", flush=True)
    report = soak(args.seconds, seed, args.replicas, args.quiesce_every)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak-last.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "soak-last.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
