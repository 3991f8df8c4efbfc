"""Fan-out and relay trees end to end: lag per depth, and what the primary pays for it.

An open-loop writer sends single puts at a fixed rate (bench/paced_writer.py); listener
processes on every node's PUB time each LSN (bench/lagprobe.py). A replica publishes a record
once applied (its upstream had it durable), so a leaf's lag is two hops, primary -> relay ->
leaf, each with one apply. Over exactly the writing window we read each node's CPU
(``/proc/PID/stat``) and the bytes the primary sent to its followers: TCP payload from
``ss``, and with ``netns`` its veth's counter (``bench.wan_net``: the primary alone in one
namespace side, relays in another, leaves in a third, each listener beside its node and the
writer beside the primary, so the primary's link carries only what its followers get). The
claim these rows test: under relays the primary's cost follows its direct followers, not the
size of the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.harness import BenchCluster, bench_cluster, replica_caught_up, wait_until
from bench.lagprobe import lags_ms, listener_groups, listeners
from bench.netio import Conn, sent_delta, tcp_sent
from bench.node_metrics import scrape, window_figures
from bench.paced_writer import write_paced, write_paced_in
from bench.procinfo import cpu_seconds
from bench.report import lag_summary
from bench.topology import LOCAL, Placement, Side, Topology, flat, tree
from kevo_repl.client import Client

__all__ = ["measure", "netns_placement", "run_fanout", "run_tree"]

Links = Callable[[], dict[str, int]]  # bytes each namespace side has sent onto its link


def _primary_sent(topo: Topology) -> dict[Conn, int]:
    """The primary's bytes sent so far per connection to a follower (not listener, writer)."""
    side = topo.placement.primary
    if not topo.placement.local:  # followers are in other sides: the peer is not our host
        return tcp_sent(
            topo.pids[0], lambda peer, _: not peer.startswith(f"{side.host}:"), side.prefix
        )
    followers = set(topo.pids[1:])
    return tcp_sent(topo.pids[0], lambda _, peer_pid: peer_pid in followers)


def measure(
    rate: int,
    seconds: float,
    build: Callable[[BenchCluster], Topology],
    listener_procs: int = 0,
    links: Links | None = None,
) -> dict[str, Any]:
    """Paced writes through the topology ``build`` starts; lags per follower (relays first),
    bootstraps and catch-ups from the primary's and relays' Status, CPU cores per node and
    the primary's bytes sent, both over the writing window."""
    total = int(rate * seconds)
    at: dict[str, dict[str, Any]] = {}
    with bench_cluster() as cluster:
        topo = build(cluster)
        place = topo.placement

        def counters() -> dict[str, Any]:
            if not topo.metrics_port:
                return {}
            return scrape(place.primary.host, topo.metrics_port)

        def mark(name: str) -> None:  # the clock inside the readings: the window is the writes
            t = time.monotonic()
            got: dict[str, Any] = {"metrics": counters()} if name == "start" else {}
            got["cpu"] = [cpu_seconds(p) for p in topo.pids]  # the scrape's bytes outside
            got["tcp"] = _primary_sent(topo)  # the link window, the CPU next to the clock
            got["links"] = links() if links else {}
            if name == "end":
                got["metrics"] = counters()
            at[name] = {**got, "t": time.monotonic() if name == "start" else t}

        sides = [side.netns for _, side in topo.targets]
        addresses = [a for a, _ in topo.targets]
        with listeners("kevo", addresses, listener_procs, sides) as collect:
            if place.local:
                _, last = write_paced(topo.primary, rate, total, mark)
            else:
                _, last = write_paced_in(place.primary.netns, topo.primary, rate, total, mark)
            gaps = 0
            for address in topo.followers:
                with Client(address, timeout_ms=10_000) as rc:
                    wait_until("replicas converge", replica_caught_up(rc, last, cluster), 120, 0.01)
            converged = time.monotonic()
            for address in topo.followers:
                with Client(address, timeout_ms=10_000) as rc:
                    gaps += int(rc.status_message().gaps)
            seen = collect()
        infos = []
        for address in [topo.primary, *topo.relays]:
            with Client(address, timeout_ms=10_000) as c:
                infos += list(c.status_message().replicas)
    a, b = at["start"], at["end"]
    window = b["t"] - a["t"]
    per_follower = [lags_ms(seen[0], s) for s in seen[1:]]
    return {
        "elapsed": window,
        "written": len(seen[0]),
        "per_relay": per_follower[: len(topo.relays)],
        "per_replica": per_follower[len(topo.relays) :],  # the leaves
        "bootstraps": sum(int(i.bootstraps) for i in infos),
        "catchups": sum(int(i.catchups) for i in infos),
        "gaps": gaps,
        "converge_s": converged - b["t"],
        "cpu": [(y - x) / window for x, y in zip(a["cpu"], b["cpu"], strict=True)],
        "primary_tcp_bytes": sent_delta(a["tcp"], b["tcp"]),
        "link_tx_bytes": {s: b["links"][s] - a["links"][s] for s in b["links"]},
        "counters": window_figures(a["metrics"], b["metrics"], window) if b["metrics"] else {},
        "relays": len(topo.relays),
        "listener_procs": len(listener_groups(len(topo.pids), listener_procs, sides)),
        "placement": "loopback" if place.local else "netns",
    }


def _p(per: list[tuple[list[float], int]], key: str) -> list[float]:
    return [lag_summary(lags)[key] for lags, _ in per]


def _figures(m: dict[str, Any], rate: int, seconds: float) -> dict[str, Any]:
    """What every fan-out row reports: lag per depth, CPU, the primary's bytes sent."""
    cpu, r, window = m["cpu"], m["relays"], m["elapsed"]
    writes = max(1, m["written"])
    out: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(m["written"] / window),
        "placement": m["placement"],
    }
    for depth, per in (("relay", m["per_relay"]), ("leaf", m["per_replica"])):
        if per:
            p99 = _p(per, "lag_p99_ms")
            out[f"{depth}_p50_ms_median"] = round(statistics.median(_p(per, "lag_p50_ms")), 3)
            out[f"{depth}_p99_ms_median"] = round(statistics.median(p99), 3)
            out[f"{depth}_p99_ms_max"] = max(p99)
    out["primary_cpu"] = round(cpu[0], 3)
    out["primary_cpu_us_per_write"] = round(cpu[0] * window / writes * 1e6, 1)
    if r:
        out["relay_cpu_mean"] = round(statistics.fmean(cpu[1 : 1 + r]), 3)
    out["leaf_cpu_mean" if r else "replica_cpu_mean"] = round(statistics.fmean(cpu[1 + r :]), 3)
    out["nodes_cpu"] = round(sum(cpu), 2)
    out["primary_tcp_kb_per_s"] = round(m["primary_tcp_bytes"] / window / 1e3, 1)
    out["primary_tcp_bytes_per_write"] = round(m["primary_tcp_bytes"] / writes)
    for side, nbytes in m["link_tx_bytes"].items():
        out[f"{side}_link_kb_per_s"] = round(nbytes / window / 1e3, 1)
    if "p" in m["link_tx_bytes"]:
        out["primary_link_bytes_per_write"] = round(m["link_tx_bytes"]["p"] / writes)
    out.update(m["counters"])
    published = m["counters"].get("primary_published_kb_per_s")
    if published:  # how many copies of its stream the primary sent (+ replies, beacons)
        out["primary_copies_sent"] = round(out["primary_tcp_kb_per_s"] / published, 1)
    missing = sum(n for _, n in m["per_replica"] + m["per_relay"])
    out.update(missing_on_replica_streams=missing, bootstraps=m["bootstraps"])
    out.update(catchups=m["catchups"], gaps=m["gaps"], listener_procs=m["listener_procs"])
    out["converge_s"] = round(m["converge_s"], 2)  # writes' end to the last follower's apply
    return out


def netns_placement(wan: Any) -> Placement:
    """The primary in side ``p``, relays in ``relay``, leaves (flat replicas) in ``leaf``."""

    def side(name: str) -> Side:
        if name not in wan.sides:
            return Side()
        prefix = tuple(wan.exec_prefix(name))
        return Side(prefix, wan.address(name), prefix[-1])

    return Placement(side("p"), side("relay"), side("leaf"))


@contextmanager
def _where(netns: bool, sides: list[str]) -> Iterator[tuple[Placement, Links | None]]:
    """Loopback, or a WAN of namespace sides (removed on the way out, whatever happened;
    a process of ours still in one is ended by PID first)."""
    if not netns:
        yield LOCAL, None
        return
    from bench.wan_net import Wan

    with Wan(sides) as wan:
        try:
            yield netns_placement(wan), lambda: {s: wan.tx_bytes(s) for s in sides}
        finally:
            _end_left_behind([wan.exec_prefix(s)[-1] for s in sides])


def _end_left_behind(namespaces: list[str]) -> None:
    """SIGKILL by PID whatever still runs in our namespaces (only what we started can)."""
    for ns in namespaces:
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def run_fanout(
    replicas: int,
    rate: int = 5000,
    seconds: float = 10,
    listener_procs: int = 0,
    netns: bool = False,
    compression: str = "auto",
) -> dict[str, Any]:
    """One primary and ``replicas`` replicas at ``rate``: lag p99 per replica. ``compression``
    is the replicas' ``--compression``."""
    args = ("--compression", compression)
    with _where(netns, ["p", "leaf"]) as (place, links):
        m = measure(
            rate, seconds, lambda c: flat(c, replicas, place, args, True), listener_procs, links
        )
    p99 = _p(m["per_replica"], "lag_p99_ms")
    return {
        "system": "kevo",
        "topology": f"flat {replicas}",
        "replicas": replicas,
        "lag_p50_ms_per_replica": _p(m["per_replica"], "lag_p50_ms"),
        "lag_p99_ms_per_replica": p99,
        "lag_p99_ms_max": max(p99),
        "lag_p99_ms_median": round(statistics.median(p99), 3),
        "compression": compression,
        **_figures(m, rate, seconds),
    }


def run_tree(
    relays: int,
    leaves: int,
    rate: int = 5000,
    seconds: float = 10,
    listener_procs: int = 0,
    netns: bool = False,
    compression: str = "auto",
) -> dict[str, Any]:
    """Primary -> ``relays`` relays -> ``leaves`` leaves at ``rate``: a leaf's lag runs from
    the commit on the primary's PUB to the apply on the leaf's PUB (two hops)."""
    args = ("--compression", compression)

    def build(c: BenchCluster) -> Topology:
        return tree(c, relays, leaves, place, args, True)

    with _where(netns, ["p", "relay", "leaf"]) as (place, links):
        m = measure(rate, seconds, build, listener_procs, links)
    p99 = _p(m["per_replica"], "lag_p99_ms")
    relay_p99 = _p(m["per_relay"], "lag_p99_ms")
    return {
        "system": "kevo",
        "topology": f"tree {relays}x{leaves}",
        "relays": relays,
        "leaves": leaves,
        "lag_p50_ms_per_leaf": _p(m["per_replica"], "lag_p50_ms"),
        "lag_p99_ms_per_leaf": p99,
        "lag_p50_ms_per_relay": _p(m["per_relay"], "lag_p50_ms"),
        "lag_p99_ms_per_relay": relay_p99,
        "lag_p99_ms_max": max(p99),
        "lag_p99_ms_median": round(statistics.median(p99), 3),
        "relay_p99_ms_max": max(relay_p99),
        "compression": compression,
        **_figures(m, rate, seconds),
    }
