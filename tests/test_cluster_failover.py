"""``kevo-repl cluster --failover``: a real etcd and three members, as a user runs them.

The group elects one leader, a write sent to a replica member reaches it, a leader killed
with SIGKILL is replaced within the TTL (3 s here) and a few turns, SIGTERM ends every
member and etcd with exit 0, and a rerun on the same directory is the same group. The
members and etcd are ended by the cluster itself; if a test fails first, every PID the
cluster printed is killed, then the cluster's own (never by name).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from kevo_repl.client import Client
from kevo_repl.ha.local_etcd import ETCD_MISSING
from kevo_repl.node_status import NodeStatus
from tests.cli_support import Spawned, free_cluster_base, kevo, kill_pid, pid_alive
from tests.faults.ha_group import require_etcd
from tests.nodes import wait_for
from tests.test_cli_cluster import PID_LINE

needs_etcd = pytest.mark.usefixtures("etcd_required")


@pytest.fixture
def etcd_required() -> None:
    require_etcd()


ETCD_LINE = r"\[cluster\] etcd: (\S+) \(pid (\d+),"
RESTARTED = r"\[cluster\] restarted (\S+) as PID (\d+)"


def gone(pid: int) -> bool:
    return not pid_alive(pid)


class RunningGroup:
    """``cluster --failover`` in the background, its members' and etcd's PIDs from its notes."""

    def __init__(self, data: Path, base: int, *extra: str) -> None:
        self.base = base
        self.proc = Spawned.start(
            "cluster", "--failover", "--members", "3", "--data", str(data),
            "--port", str(base), "--ttl-s", "3", *extra,
        )  # fmt: skip
        self.proc.wait_line(r"\[cluster\] (ready|a node did not come up)", timeout=60)
        etcd = self.proc.wait_line(ETCD_LINE)
        self.etcd_url, self.etcd_pid = etcd[1], int(etcd[2])
        self.pids: dict[str, int] = {}
        self.endpoints: dict[str, str] = {}
        for line in self.proc.lines:
            if m := re.search(PID_LINE, line):
                self.pids[m[1]] = int(m[3])
                self.endpoints[m[1]] = m[2]
        assert list(self.pids) == ["n1", "n2", "n3"], self.proc.output()
        assert self.endpoints["n3"] == f"127.0.0.1:{base + 20}"
        assert self.etcd_url == f"http://127.0.0.1:{base + 90}"

    def all_pids(self) -> list[int]:
        """Every process the cluster started, restarted members included."""
        restarted = [int(m[2]) for ln in self.proc.lines if (m := re.search(RESTARTED, ln))]
        return [*self.pids.values(), *restarted, self.etcd_pid]

    def statuses(self, names: list[str]) -> dict[str, NodeStatus]:
        out = {}
        for name in names:
            with Client(self.endpoints[name], timeout_ms=1000) as c:
                out[name] = c.status()
        return out

    def wait_one_leader(self, names: list[str], timeout_s: float = 30.0) -> str:
        """Poll until every one of ``names`` answers and exactly one is a primary taking
        writes (the others replicas); its name."""

        def one() -> str:
            roles = {n: (s.role, s.fenced) for n, s in self.statuses(names).items()}
            leaders = [n for n, (role, fenced) in roles.items() if role == "primary"]
            if len(leaders) == 1 and not roles[leaders[0]][1]:
                return leaders[0]
            return ""

        return wait_for(f"one leader among {names}", one, timeout_s=timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the cluster; it exits 0 and leaves no member nor etcd behind."""
        pids = self.all_pids()
        self.proc.signal(sig)
        assert self.proc.wait(30) == 0, self.proc.output()
        assert self.proc.lines[-1] == "[cluster] stopped"
        for pid in pids:
            wait_for(f"PID {pid} gone", partial(gone, pid), timeout_s=5)

    def cleanup(self) -> None:
        for pid in self.all_pids():
            kill_pid(pid)
        self.proc.kill()


@pytest.fixture
def groups() -> Iterator[list[RunningGroup]]:
    started: list[RunningGroup] = []
    try:
        yield started
    finally:
        for g in started:
            g.cleanup()


def cli_roles(g: RunningGroup) -> dict[str, str]:
    """Each member's role as ``status --node`` prints it."""
    roles = {}
    for name, ep in g.endpoints.items():
        r = kevo("status", "--node", ep, "--json", "--request-timeout-ms", "2000")
        if r.returncode == 0:
            roles[name] = json.loads(r.stdout)["role"]
    return roles


def put(node: str, key: str, value: str) -> int:
    r = kevo("put", "--node", node, key, value, "--request-timeout-ms", "2000")
    return int(r.stdout) if r.returncode == 0 else 0


def readable_from(g: RunningGroup, names: list[str], key: str, value: str, lsn: int) -> None:
    for name in names:
        r = kevo("get", "--node", g.endpoints[name], key, "--min-lsn", str(lsn),
                 "--timeout-ms", "10000")  # fmt: skip
        assert (r.returncode, r.stdout) == (0, value + "\n"), (name, r.stderr)


@needs_etcd
def test_the_group_elects_redirects_fails_over_and_stops(
    groups: list[RunningGroup], tmp_path: Path
) -> None:
    g = RunningGroup(tmp_path / "g", free_cluster_base(2, (90, 91)))
    groups.append(g)
    names = ["n1", "n2", "n3"]
    leader = g.wait_one_leader(names)
    g.proc.wait_line(rf"\[cluster\] leader: {leader} ")
    roles = cli_roles(g)
    assert sorted(roles.values()) == ["primary", "replica", "replica"], roles
    replica = next(n for n in names if n != leader)
    lsn = put(g.endpoints[replica], "k", "v")  # refused there, redirected to the leader
    assert lsn > 0
    readable_from(g, names, "k", "v", lsn)

    mark = len(g.proc.lines)
    kill_pid(g.pids[leader])
    killed_at = time.monotonic()
    g.proc.wait_line(rf"\[cluster\] {leader} crashed \(signal 9\)", start=mark)
    survivors = [n for n in names if n != leader]
    lsn2 = wait_for(
        "a new leader takes writes", partial(put, g.endpoints[survivors[0]], "k2", "v2"), 10
    )
    took_s = time.monotonic() - killed_at
    new_leader = g.wait_one_leader(survivors, timeout_s=5)
    assert new_leader != leader
    readable_from(g, survivors, "k", "v", lsn)
    readable_from(g, survivors, "k2", "v2", lsn2)
    print(f"a new leader ({new_leader}) took writes {took_s:.1f}s after {leader} was killed")
    g.stop(signal.SIGTERM)


@needs_etcd
def test_a_rerun_on_the_same_dir_is_the_same_group_and_restart_restarts_members_and_etcd(
    groups: list[RunningGroup], tmp_path: Path
) -> None:
    data = tmp_path / "g"
    base = free_cluster_base(2, (90, 91))
    first = RunningGroup(data, base)
    groups.append(first)
    names = ["n1", "n2", "n3"]
    leader = first.wait_one_leader(names)
    history = first.statuses([leader])[leader].history[0][0]  # the group's first history
    lsn = put(first.endpoints["n1"], "kept", "yes")
    assert lsn > 0
    readable_from(first, names, "kept", "yes", lsn)
    first.stop(signal.SIGINT)

    again = RunningGroup(data, base, "--restart")  # at once: same ports, same data
    groups.append(again)
    again.wait_one_leader(names)
    readable_from(again, names, "kept", "yes", lsn)
    for name, s in again.statuses(names).items():
        assert s.history[0][0] == history, (name, s.history)  # the same line, not a new one
    assert not any("initialized_scope" in line for line in again.proc.lines)

    replica = next(n for n, s in again.statuses(names).items() if s.role == "replica")
    mark = len(again.proc.lines)
    kill_pid(again.pids[replica])
    again.proc.wait_line(rf"\[cluster\] restarted {replica} as PID \d+", start=mark)
    wait_for(
        f"{replica} follows again",
        lambda: kevo("status", "--node", again.endpoints[replica], "--ready").returncode == 0,
        timeout_s=20,
    )
    mark = len(again.proc.lines)
    kill_pid(again.etcd_pid)  # etcd too is restarted, on its data: the group goes on
    again.proc.wait_line(r"\[cluster\] etcd exited \(signal 9\)", start=mark)
    again.proc.wait_line(r"\[cluster\] restarted etcd as PID \d+", start=mark)
    lsn = wait_for("writes after etcd's restart", partial(put, again.endpoints["n1"], "k3", "3"))
    readable_from(again, names, "k3", "3", lsn)
    again.stop(signal.SIGTERM)


def test_without_etcd_nothing_starts(tmp_path: Path) -> None:
    data = tmp_path / "g"
    env = {**os.environ, "KEVO_ETCD": "/nonexistent"}
    r = kevo("cluster", "--failover", "--data", str(data), "--port", "17000", env=env)
    assert r.returncode == 1
    assert ETCD_MISSING in r.stderr
    assert not data.exists()  # no logs, no etcd data, no member directory


def test_group_flags_without_failover_are_refused(tmp_path: Path) -> None:
    r = kevo("cluster", "--data", str(tmp_path / "c"), "--members", "3")
    assert r.returncode == 2 and "--members and --ttl-s are for --failover" in r.stderr
    assert not (tmp_path / "c").exists()
