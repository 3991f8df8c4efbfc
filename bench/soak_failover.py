"""Soak of automatic failover: random leader kills, pauses and partitions through a real etcd.

    python -m bench.soak --failover [--faults 20] [--seed N] [--out bench/results]

Three ``kevo-repl node`` members (lease 3 s) and a real etcd; n1 runs in a network
namespace of its own (veth to the host, where etcd and the others listen), so it can be cut
off. Two writers put with ``wait_replicas=1`` to whichever member accepts, recording who
accepted each write (``tests/faults/ha_group.py``). Each fault, drawn with the seed:

* ``kill``: SIGKILL the leader, wait for another leader, restart it (it rejoins as a replica);
* ``pause``: SIGSTOP the leader past its lease, wait for another leader, SIGCONT it: it
  wakes with a lapsed lease, so it must refuse writes and follow;
* ``partition_etcd`` / ``partition_all``: make n1 lead (a switchover through etcd, if it
  does not), cut it from etcd only (clients and followers still reach it) or from
  everything, wait for another leader, heal, wait until n1 follows.

Each records the failover time (the fault to the first write acknowledged by the new leader).
At the end: every acknowledged write is present on every member, no two terms accepted
writes at once, every member converged, and no member bootstrapped (counted from the logs).
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kevo_repl.ha.local_etcd import LocalEtcd
from kevo_repl.testing.ports import free_port_pair
from tests.faults.checkers import count_events, verify_acked
from tests.faults.ha_group import HaGroup, HaWriter, overlapping_terms, wait_group_converged
from tests.faults.system import NetNs, skip_reason
from tests.nodes import wait_for

__all__ = ["soak_failover"]

TTL = 3
KINDS = ("kill", "pause", "partition_etcd", "partition_all")


class _Run:
    def __init__(self, group: HaGroup, ns: NetNs, etcd: LocalEtcd, writers: list[HaWriter]):
        self.group, self.ns, self.etcd, self.writers = group, ns, etcd, writers
        self.faults: list[dict[str, Any]] = []

    def acked(self) -> int:
        return sum(len(w.acks) for w in self.writers)

    def more_acks(self, n: int, timeout_s: float = 60.0) -> None:
        target = self.acked() + n
        wait_for(f"{n} more acknowledged writes", lambda: self.acked() >= target, timeout_s)

    def first_ack_on(self, member: str, after: float) -> float:
        address = self.group.members[member].address
        got = [a.received for w in self.writers for a in w.acks if a.node == address]
        later = [t for t in got if t > after]
        return min(later) if later else 0.0

    def rejoined(self, member: str, leader: str) -> None:
        node, want = self.group.members[member], self.group.members[leader].address

        def follows() -> bool:
            with node.client(500) as c:
                s = c.status()
            return s.role == "replica" and s.upstream == want and s.status == "ready"

        wait_for(f"{member} to follow {leader}", follows, 60)

    def inject(self, kind: str) -> dict[str, Any]:
        group = self.group
        if kind.startswith("partition"):
            self.lead_with("n1")
        old = group.wait_leader()
        node = group.members[old]
        began = time.monotonic()
        if kind == "kill":
            node.kill()
        elif kind == "pause":
            node.signal(signal.SIGSTOP)
        elif kind == "partition_etcd":
            self.ns.cut_port(self.ns.host_ip, self.etcd.client_port)
        else:
            self.ns.partition()
        new = group.wait_leader(other_than=old, timeout_s=TTL + 30)
        took = wait_for("a write on the new leader", lambda: self.first_ack_on(new, began), 60)
        if kind == "kill":
            group.start(old)
        elif kind == "pause":
            node.signal(signal.SIGCONT)
        else:
            self.ns.heal()
        self.rejoined(old, new)
        self.more_acks(50)
        record: dict[str, Any] = {
            "kind": kind,
            "leader": old,
            "new_leader": new,
            "failover_s": round(took - began, 2),
            "rejoined_s": round(time.monotonic() - began, 2),
        }
        self.faults.append(record)
        print(f"fault {len(self.faults)}: {record}", flush=True)
        return record

    def lead_with(self, member: str) -> None:
        group = self.group
        if group.wait_leader() == member:
            return
        group.switchover(member)
        for other in group.members:
            if other != member:
                self.rejoined(other, member)


def soak_failover(
    faults: int, seed: int, kinds: tuple[str, ...] = KINDS, keep_logs: Path | None = None
) -> dict[str, Any]:
    """Run ``faults`` random faults; returns the report (``ok`` says if invariants held).
    On a failure the members' logs are copied into ``keep_logs``."""
    rng = random.Random(seed)
    started = time.monotonic()
    report: dict[str, Any] = {"seed": seed, "faults_planned": faults, "ttl_s": TTL}
    failures: list[str] = []
    if (why := skip_reason()) is not None:
        return {**report, "ok": False, "failures": [f"cannot partition here: {why}"]}
    run: _Run | None = None
    with tempfile.TemporaryDirectory(prefix="kevo-soak-ha-") as tmp, NetNs() as ns:
        root = Path(tmp)
        etcd = LocalEtcd(root / "etcd", free_port_pair(), host=ns.host_ip).start()
        group = HaGroup(root, etcd.url, ttl_s=TTL, host=ns.host_ip)
        writers = [
            HaWriter(
                lambda: [m.address for m in group.members.values()],
                prefix=f"w{i}",
                max_seconds=3600,
            )
            for i in range(2)
        ]
        try:
            group.start("n1", prefix=ns.exec_prefix, host=ns.ns_ip)
            group.wait_leader()
            group.start("n2")
            group.start("n3")
            for w in writers:
                w.start()
            run = _Run(group, ns, etcd, writers)
            run.more_acks(200)
            for _ in range(faults):
                run.inject(rng.choice(kinds))
            for w in writers:
                w.stop()
                failures += [f"writer failed: {e!r}" for e in w.errors]
            leader = group.wait_leader()
            wait_group_converged(group, leader, 120)
            verified = {
                m: sum(verify_acked(n, w.log.expected()) for w in writers)
                for m, n in group.members.items()
            }
            failures += overlapping_terms([a for w in writers for a in w.acks])
            boots = {
                m: count_events(n.log_path, "bootstrap_start") for m, n in group.members.items()
            }
            if sum(boots.values()):
                failures.append(f"unexpected bootstraps: {boots}")
            report.update(
                writes_acknowledged=sum(len(w.acks) for w in writers),
                writes_unknown_outcome=sum(w.log.unknown for w in writers),
                writes_refused_not_leader=sum(w.log.refused for w in writers),
                keys_verified_per_member=verified,
                bootstraps=boots,
            )
        except (AssertionError, Exception) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            report["node_logs"] = [f"{m}: {n.log_tail(15)}" for m, n in group.members.items()]
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for m, n in group.members.items():
                    shutil.copy(n.log_path, keep_logs / f"{m}.log")
                report["logs_kept_in"] = str(keep_logs)
        finally:
            for w in writers:
                w.stop()
            group.close()
            etcd.stop()
    done = run.faults if run is not None else []
    times = sorted(f["failover_s"] for f in done)
    report.update(
        seconds_run=round(time.monotonic() - started, 1),
        faults_injected=len(done),
        faults_by_kind=dict(Counter(f["kind"] for f in done)),
        failover_s_median=times[len(times) // 2] if times else None,
        failover_s_max=times[-1] if times else None,
        faults=done,
        failures=failures,
        ok=not failures and len(done) == faults,
    )
    return report


def markdown(report: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.get("faults_by_kind", {}).items()))
    lines = [
        f"# Failover soak report (seed {report['seed']})",
        "",
        "| figure | value |",
        "|---|---|",
        f"| result | {'all invariants held' if report['ok'] else 'FAILED'} |",
        f"| duration | {report.get('seconds_run')} s, 3 members, lease {report['ttl_s']} s |",
        f"| faults injected | {report.get('faults_injected')} ({kinds}) |",
        f"| failover time (fault to first write on the new leader) | median "
        f"{report.get('failover_s_median')} s, max {report.get('failover_s_max')} s |",
        f"| writes acknowledged (wait_replicas=1) | {report.get('writes_acknowledged', '-')} |",
        f"| acknowledged writes lost | "
        f"{'0' if report['ok'] else 'see failures'} (every key read back on every member) |",
        f"| writes with unknown outcome | {report.get('writes_unknown_outcome', '-')} |",
        f"| writes refused by a non-leader (redirected) | "
        f"{report.get('writes_refused_not_leader', '-')} |",
        f"| bootstraps | {report.get('bootstraps', '-')} |",
    ]
    if report.get("failures"):
        lines += ["", "## Failures", "", *[f"- {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"
