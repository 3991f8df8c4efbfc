"""One function per ``python -m bench`` command: kevo rows, Redis rows, ratios, targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench import dataset_bench as ds
from bench import fanout_bench as fb
from bench import redis_bench as rb
from bench import replication_bench as kb
from bench.redis_server import INSTALL_HINT, redis_available
from bench.relay_floor import run_relay_floor
from bench.report import add_ratios
from bench.zmq_limit import run_zmq_limit

__all__ = [
    "bootstrap",
    "catchup",
    "fanout",
    "lag",
    "memory",
    "result",
    "throughput",
    "zmq_rows",
]


def result(command: str, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A command's JSON object: the first kevo row's figures at top level, then the rows."""
    kevo = next((r for r in rows if r.get("system") == "kevo"), {})
    head = {k: v for k, v in kevo.items() if k != "system" and not isinstance(v, list)}
    out: dict[str, Any] = {"command": command, **head, "rows": rows}
    out["ratios"] = add_ratios(command, rows)
    out.update(extra)
    return out


def _redis(rows: list[dict[str, Any]], notes: list[str], *calls: Callable[[], Any]) -> None:
    if not redis_available():
        if INSTALL_HINT not in notes:
            notes.append(f"{INSTALL_HINT}; Redis rows skipped")
        return
    for call in calls:
        got = call()
        rows.extend(got if isinstance(got, list) else [got])


def _target(text: str, measured: Any, met: bool) -> dict[str, Any]:
    return {"target": text, "measured": measured, "met": bool(met)}


def _find(rows: list[dict[str, Any]], system: str, **shape: Any) -> dict[str, Any] | None:
    for r in rows:
        if r.get("system") == system and all(r.get(k) == v for k, v in shape.items()):
            return r
    return None


def throughput(
    clients: int,
    pipeline: int,
    requests: int,
    mode: str,
    procs: int,
    redis: bool = True,
    runs: int = 1,
) -> dict[str, Any]:
    """``runs`` rounds of kevo, then Redis AOF always and no AOF, each compared within its
    round (rows carry ``run``): the target is met only if every round meets it."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    worst: list[float] = []
    for run in range(1, runs + 1):
        batch = [kb.run_throughput(clients, pipeline, requests, mode, procs)]
        if redis:
            _redis(
                batch,
                notes,
                lambda: rb.redis_throughput(True, clients, pipeline, requests),
                lambda: rb.redis_throughput(False, clients, pipeline, requests),
            )
        ref = _find(batch, "redis-aof-always")
        if ref:
            k = batch[0]
            worst.append(
                min(
                    k["writes_per_s"] / ref["writes_per_s"],
                    k["replica_applied_per_s"] / ref["replica_applied_per_s"],
                )
            )
        if runs > 1:
            for r in batch:
                r["run"] = run
        rows += batch
    rows.append(run_zmq_limit(pipeline))
    targets = []
    if worst:
        text = f"replicated throughput >= 1.0x Redis AOF always (C={clients}, D={pipeline})"
        measured = f"{min(worst):.2f}x" + (
            f"-{max(worst):.2f}x over {len(worst)} runs" if len(worst) > 1 else ""
        )
        targets.append(_target(text, measured, min(worst) >= 1.0))
    return result("throughput", rows, targets=targets, notes=notes)


def lag(rate: int, seconds: float, redis: bool = True, cdf: bool = False) -> dict[str, Any]:
    """kevo's replica, Redis's, and the floor: a pyzmq relay that does nothing but re-send."""
    rows = [kb.run_lag(rate, seconds, cdf=cdf), run_relay_floor(rate, seconds)]
    notes: list[str] = []
    if redis:
        _redis(
            rows,
            notes,
            lambda: rb.redis_lag(True, rate, seconds, cdf=cdf),
            lambda: rb.redis_lag(False, rate, seconds, cdf=cdf),
        )
    targets = []
    if rate == 5000:
        p99 = rows[0]["lag_p99_ms"]
        targets.append(_target("lag p99 <= 0.5 ms at 5k writes/s", f"{p99} ms", p99 <= 0.5))
    return result("lag", rows, targets=targets, notes=notes)


def fanout(
    replicas: list[int],
    rate: int,
    seconds: float,
    redis: bool = True,
    trees: Sequence[tuple[int, int]] = (),
    listener_procs: int = 0,
    netns: bool = False,
    compression: str = "auto",
) -> dict[str, Any]:
    """Flat rows (R replicas of the primary, each beside Redis's), then relay-tree rows.
    ``netns``: kevo's nodes in namespace sides (the primary's link counted); skipped with a
    note where they cannot be built."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if netns:
        from bench.wan_net import skip_reason

        reason = skip_reason()
        if reason is not None:
            notes.append(f"--netns: {reason}; nodes on loopback, bytes from ss only")
            netns = False
    for r in replicas:
        rows.append(fb.run_fanout(r, rate, seconds, listener_procs, netns, compression))
        if redis:
            _redis(rows, notes, lambda r=r: rb.redis_fanout(True, r, rate, seconds))  # type: ignore[misc]
    targets = []
    k16 = _find(rows, "kevo", replicas=16)
    if k16:
        ok = k16["lag_p99_ms_max"] <= 6 and k16["bootstraps"] == 0
        measured = f"worst p99 {k16['lag_p99_ms_max']} ms, {k16['bootstraps']} bootstraps"
        text = f"16 replicas at {rate}/s: worst lag p99 <= 6 ms, zero bootstraps"
        targets.append(_target(text, measured, ok))
    for relays, leaves in trees:
        rows.append(fb.run_tree(relays, leaves, rate, seconds, listener_procs, netns, compression))
    return result("fanout", rows, targets=targets, notes=notes)


def bootstrap(keys: int, redis: bool = True) -> dict[str, Any]:
    rows = [ds.run_bootstrap(keys)]
    notes: list[str] = []
    if redis:
        _redis(rows, notes, lambda: rb.redis_full_sync(True, keys))
    k, targets = rows[0], []
    ref = _find(rows, "redis-aof-always")
    if ref:
        x = k["seconds"] / ref["seconds"]
        text = f"{keys:,}-key bootstrap faster than Redis full sync (time < 1.0x)"
        targets.append(_target(text, f"{x:.2f}x", x < 1))
    growth = k["primary_rss_growth_mib"]
    targets.append(_target("primary RSS growth <= 64 MB", f"{growth} MiB", growth * 1.048576 <= 64))
    return result("bootstrap", rows, targets=targets, notes=notes)


def catchup(entries: int, redis: bool = True) -> dict[str, Any]:
    rows = [ds.run_catchup(entries)]
    notes: list[str] = []
    if redis:
        _redis(rows, notes, lambda: rb.redis_partial_resync(True, entries))
    targets = []
    ref = _find(rows, "redis-aof-always")
    if ref:
        x = rows[0]["entries_per_s"] / ref["entries_per_s"]
        text = f"catch-up of {entries:,} entries faster than Redis partial resync (rate > 1.0x)"
        targets.append(_target(text, f"{x:.2f}x", x > 1))
    return result("catchup", rows, targets=targets, notes=notes)


def memory(redis: bool = True) -> dict[str, Any]:
    rows = [ds.run_idle_memory()]
    notes: list[str] = []
    if redis:
        _redis(rows, notes, rb.redis_idle_memory)
    rss = rows[0]["replica_rss_mib"]
    targets = [_target("idle replica RSS <= 25 MiB", f"{rss} MiB", rss <= 25)]
    return result("memory", rows, targets=targets, notes=notes)


def zmq_rows(batches: list[int]) -> dict[str, Any]:
    return result("zmq", [run_zmq_limit(b) for b in batches])
