"""``python -m bench wan``: the link checked, then every row of issue 14 across it.

Sections: ``wan_link`` (what the profile really gives: TCP round trips, a bulk transfer's
rate, the delay line's packets/s and lateness), ``wan_throughput``, ``wan_lag`` and
``wan_catchup`` (kevo per compression mode, Redis AOF always beside it, per kind of value).
A zstd row also says how many more CPU ms per raw MB its primary and replica spent than the
same values uncompressed. In the lag rows (same writes, same pace) that is the price of
compression; in the throughput rows the uncompressed run also pays for a saturated link
(a longer run, gap repairs), so the difference there can even be negative.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from bench import wan_bench as wb
from bench import wan_redis as wr
from bench.procinfo import cpu_seconds
from bench.redis_server import INSTALL_HINT, redis_available
from bench.suite import result
from bench.wan_net import LinkProfile, Wan, skip_reason
from bench.wan_probe import measure_bulk, measure_rtt, probe_server

__all__ = ["SECTIONS", "link_check", "throughput_entries", "wan"]

SECTIONS = ("link", "throughput", "lag", "catchup")
_PORT = 5000  # the probe server's, inside side b


def link_check(profile: LinkProfile, bulk_seconds: float = 2.0) -> dict[str, Any]:
    """Round trips of 50 ping-pongs and a bulk transfer sized to last ~``bulk_seconds``."""
    nbytes = int((profile.rate_mbit or 400) * 1e6 / 8 * bulk_seconds)
    with Wan(["a", "b"], profile) as wan:
        to = f"{wan.address('b')}:{_PORT}"
        with probe_server(wan.exec_prefix("b"), wan.address("b"), _PORT):
            rtts = sorted(measure_rtt(wan.exec_prefix("a"), to, 50))
            line_cpu = cpu_seconds(wan.line_pid) if wan.line_pid else 0.0
            seconds = measure_bulk(wan.exec_prefix("a"), to, nbytes, timeout=60 + 10 * bulk_seconds)
            line_cpu = cpu_seconds(wan.line_pid) - line_cpu if wan.line_pid else 0.0
    line = wan.line_stats
    packets = float(line.get("packets", 0))
    return {
        "system": f"link ({wan.mode})",
        "rtt_ms": profile.rtt_ms,
        "rate_mbit": profile.rate_mbit,
        "rtt_min_ms": round(rtts[0], 3),
        "rtt_p50_ms": round(statistics.median(rtts), 3),
        "rtt_max_ms": round(rtts[-1], 3),
        "bulk_mb": round(nbytes / 1e6, 1),
        "bulk_mbit": round(nbytes * 8 / seconds / 1e6, 1),
        "line_pkts_per_s": round(packets / seconds) if packets else None,
        "line_late_mean_ms": round(line["late_us_sum"] / packets / 1e3, 3) if packets else None,
        "line_late_max_ms": round(line["late_us_max"] / 1e3, 3) if packets else None,
        "line_dropped": int(line.get("lost", 0) + line.get("overflow", 0)) if packets else None,
        "line_cpu": round(line_cpu / seconds, 2) if packets else None,  # cores, in the bulk
    }


def throughput_entries(profile: LinkProfile, seconds: float) -> int:
    """About ``seconds`` of the link's capacity in uncompressed entries (~230 B on the wire),
    or 30k/s unlimited: compressed rows end sooner."""
    per_s = profile.rate_mbit * 1e6 / 8 / 230 if profile.rate_mbit else 30_000
    return max(10_000, int(per_s * seconds) // 16 * 16)


def _cpu_extra(rows: list[dict[str, Any]]) -> None:
    """On each zstd row: CPU ms per raw MB above the uncompressed row of the same values."""
    for z in rows:
        base = next((r for r in rows if r.get("compression") == "none" and
                     r["values"] == z["values"]), None)  # fmt: skip
        if z.get("compression") != "zstd" or base is None:
            continue
        for who in ("primary", "replica"):
            key = f"{who}_cpu_ms_per_mb"
            z[f"extra_{key}"] = round(z[key] - base[key], 1)


def wan(
    profile: LinkProfile,
    seconds: float = 10,
    values: tuple[str, ...] = ("json", "random"),
    catchup_entries: int = 1_000_000,
    lag_rate: int = 2000,
    redis: bool = True,
    only: tuple[str, ...] = SECTIONS,
) -> dict[str, Any]:
    """Every section in ``only``; each row starts its own WAN, nodes and agents."""
    out: dict[str, Any] = {"command": "wan", "profile": asdict(profile), "sections": {}}
    reason = skip_reason()
    if reason:
        out["notes"] = [f"bench wan skipped: {reason}"]
        return out
    notes: list[str] = []
    if redis and not redis_available():
        notes.append(f"{INSTALL_HINT}; Redis rows skipped")
        redis = False
    modes = wb.MODES
    sec = out["sections"]
    entries = throughput_entries(profile, seconds)
    deadline = 120 + 10 * seconds
    if "link" in only:
        sec["wan_link"] = result("wan_link", [link_check(profile)])
    if "throughput" in only:
        rows = []
        for v in values:
            rows += [wb.kevo_throughput(profile, m, v, entries, deadline) for m in modes]
            if redis:
                rows.append(wr.redis_throughput(profile, v, entries, deadline))
        _cpu_extra(rows)
        sec["wan_throughput"] = result("wan_throughput", rows, notes=notes)
    if "lag" in only:
        rows = []
        for v in values:
            rows += [wb.kevo_lag(profile, m, v, lag_rate, seconds) for m in modes]
            if redis:
                rows.append(wr.redis_lag(profile, v, lag_rate, seconds))
        _cpu_extra(rows)
        sec["wan_lag"] = result("wan_lag", rows, notes=notes)
    if "catchup" in only:
        rows = []
        limit = 300 + catchup_entries / 2000
        for v in values:
            rows += [wb.kevo_catchup(profile, m, v, catchup_entries, limit) for m in modes]
            if redis:
                rows.append(wr.redis_catchup(profile, v, catchup_entries, limit))
        sec["wan_catchup"] = result("wan_catchup", rows, notes=notes)
    return out
