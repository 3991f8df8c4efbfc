"""Automatic failover through a real etcd: real member processes, real faults, exact counts.

Each test runs three ``kevo-repl node`` members with a 3 s lease under a load of
``wait_replicas=1`` writes that records which node accepted each write
(``tests/faults/ha_group.py``), and checks afterwards: every acknowledged write is present
(hot keys overwritten, so a lost or reordered write shows), no two terms accepted writes at
the same time, every member converges, and no member bootstrapped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kevo_repl.ha.local_etcd import LocalEtcd
from kevo_repl.testing.ports import free_port_pair
from tests.faults.checkers import count_events, verify_acked
from tests.faults.ha_group import (
    HaGroup,
    HaWriter,
    overlapping_terms,
    require_etcd,
    wait_group_converged,
)
from tests.faults.system import NetNs, skip_reason
from tests.nodes import wait_for

TTL = 3
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[LocalEtcd]:
    require_etcd()
    e = LocalEtcd(tmp_path / "etcd", free_port_pair()).start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def group(tmp_path: Path, etcd: LocalEtcd) -> Iterator[HaGroup]:
    g = HaGroup(tmp_path, etcd.url, ttl_s=TTL)
    try:
        yield g
    finally:
        g.close()


def start_three(
    group: HaGroup, first_prefix: list[str] | None = None, first_host: str = ""
) -> None:
    """n1 first (it initializes the scope and leads), then n2 and n3 following it."""
    group.start("n1", prefix=first_prefix, host=first_host)
    assert group.wait_leader() == "n1"
    for m in ("n2", "n3"):
        group.start(m)

    def following() -> bool:
        for m in ("n2", "n3"):
            with group.members[m].client(500) as c:
                s = c.status()
            if s.role != "replica" or s.status != "ready":
                return False
        return True

    wait_for("n2 and n3 to follow n1", following)


def writers(group: HaGroup, n: int = 2) -> list[HaWriter]:
    out = [
        HaWriter(lambda: [m.address for m in group.members.values()], prefix=f"w{i}")
        for i in range(n)
    ]
    for w in out:
        w.start()
    return out


def acked(ws: list[HaWriter]) -> int:
    return sum(len(w.acks) for w in ws)


def wait_more_acks(ws: list[HaWriter], more: int, timeout_s: float = 30.0) -> None:
    target = acked(ws) + more
    wait_for(f"{more} more acknowledged writes", lambda: acked(ws) >= target, timeout_s)


def finish(group: HaGroup, ws: list[HaWriter]) -> str:
    """Stop the load; check the invariants; the final leader's id."""
    for w in ws:
        w.stop()
        assert not w.errors, w.errors
    leader = group.wait_leader()
    wait_group_converged(group, leader)
    for w in ws:
        verify_acked(group.members[leader], w.log.expected())
    assert overlapping_terms([a for w in ws for a in w.acks]) == []
    for m, node in group.members.items():
        assert count_events(node.log_path, "bootstrap_start") == 0, f"{m} bootstrapped"
    return leader


def first_ack_after(ws: list[HaWriter], address: str, t: float) -> float:
    times = [a.received for w in ws for a in w.acks if a.node == address and a.sent > t]
    return min(times) if times else 0.0


def test_leader_killed_under_load_fails_over_within_ttl(group: HaGroup) -> None:
    start_three(group)
    ws = writers(group)
    wait_more_acks(ws, 200)
    old = group.leader_id()
    killed_at = time.monotonic()
    group.members[old].kill()
    new = group.wait_leader(other_than=old, timeout_s=TTL + 15)
    address = group.members[new].address
    took = wait_for("a write on the new leader", lambda: first_ack_after(ws, address, killed_at))
    took -= killed_at
    print(f"\nfailover: {old} SIGKILLed, {new} acknowledged a write {took:.2f} s later")
    assert took <= TTL + 2, f"the new leader served writes {took:.2f} s after the kill"
    wait_more_acks(ws, 200)
    group.start(old)  # back as a replica of the new leader, rewound if it had to be

    def follows() -> bool:
        with group.members[old].client(500) as c:
            s = c.status()
        return s.role == "replica" and s.upstream == address and s.status == "ready"

    wait_for(f"{old} to follow {new}", follows)
    wait_more_acks(ws, 100)
    assert finish(group, ws) == new


@pytest.mark.parametrize("cut", ["etcd_only", "everything"])
def test_partitioned_leader_fences_itself_before_another_leads(tmp_path: Path, cut: str) -> None:
    if (why := skip_reason()) is not None:
        pytest.skip(why)
    require_etcd()
    with NetNs() as ns:
        etcd = LocalEtcd(tmp_path / "etcd", free_port_pair(), host=ns.host_ip).start()
        group = HaGroup(tmp_path, etcd.url, ttl_s=TTL, host=ns.host_ip)
        try:
            start_three(group, first_prefix=ns.exec_prefix, first_host=ns.ns_ip)
            ws = writers(group)
            wait_more_acks(ws, 200)
            if cut == "etcd_only":  # clients and followers still reach it: only etcd is gone
                ns.cut_port(ns.host_ip, etcd.client_port)
            else:
                ns.partition()
            new = group.wait_leader(other_than="n1", timeout_s=TTL + 15)
            wait_more_acks(ws, 200)
            ns.heal()
            old = group.members["n1"]

            def rejoined() -> bool:
                with old.client(500) as c:
                    s = c.status()
                return s.role == "replica" and s.status == "ready"

            wait_for("n1 to rejoin as a replica", rejoined)
            wait_more_acks(ws, 100)
            assert finish(group, ws) == new
        finally:
            group.close()
            etcd.stop()


def test_etcd_down_promotes_nobody_and_the_group_resumes(group: HaGroup, etcd: LocalEtcd) -> None:
    start_three(group)
    ws = writers(group)
    wait_more_acks(ws, 200)
    leader = group.leader_id()
    etcd.stop()
    down_at = time.monotonic()
    seen_primaries: set[str] = set()
    notes: dict[str, str] = {}
    while time.monotonic() - down_at < 2 * TTL:  # sample who accepts writes while it is down
        for m, node in group.members.items():
            with node.client(500) as c:
                s = c.status()
            if s.role == "primary":
                seen_primaries.add(m)
            notes[m] = s.coordinator
        time.sleep(0.1)
    assert seen_primaries == {leader}, f"promoted while etcd was down: {seen_primaries}"
    with group.members[leader].client(500) as c:
        assert c.status().fenced, "the leader still accepts writes after its lease would end"
    for m, note in notes.items():
        assert "unreachable" in note, f"{m} does not say etcd is unreachable: {note!r}"
    acks_down = acked(ws)
    etcd.start()
    assert group.wait_leader(timeout_s=TTL + 15) == leader  # its lease outlived the outage
    wait_more_acks(ws, 200)
    assert acked(ws) > acks_down
    finish(group, ws)


def test_sigterm_of_the_leader_hands_the_key_over_without_waiting_a_ttl(group: HaGroup) -> None:
    start_three(group)
    ws = writers(group, 1)
    wait_more_acks(ws, 100)
    old = group.leader_id()
    stopped_at = time.monotonic()
    node = group.members[old]
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGTERM)
    assert node.proc.wait(15) == 0
    new = group.wait_leader(other_than=old, timeout_s=TTL + 15)
    took = time.monotonic() - stopped_at
    print(f"\nclean stop of {old}: {new} leads {took:.2f} s later")
    wait_more_acks(ws, 100)
    group.start(old)
    wait_more_acks(ws, 50)
    assert finish(group, ws) == new


def test_switchover_under_load_loses_nothing_and_bootstraps_nothing(group: HaGroup) -> None:
    start_three(group)
    ws = writers(group)
    wait_more_acks(ws, 200)
    took = group.switchover("n3")
    print(f"\nswitchover n1 -> n3 through etcd: {took:.2f} s")
    wait_more_acks(ws, 200)

    def follows() -> bool:
        for m in ("n1", "n2"):
            with group.members[m].client(500) as c:
                s = c.status()
            if s.role != "replica" or s.upstream != group.members["n3"].address:
                return False
        return True

    wait_for("n1 and n2 to follow n3", follows)
    assert finish(group, ws) == "n3"
    last = group.read().last_failover
    assert last is not None and (last.kind, last.previous, last.to) == ("switchover", "n1", "n3")
