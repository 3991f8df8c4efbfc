"""``status --etcd`` and ``switchover --etcd`` against a real etcd and three real members.

One group (a local etcd and three ``kevo-repl node`` processes, ``--ttl-s 3``) serves the
module; every test first waits until it is whole again (a leader whose node is a writable
primary, the two others ready replicas following it), so each starts from a known state
whatever the one before did. Argument errors and the text of odd states need no group.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from subprocess import CompletedProcess
from typing import Any

import pytest

from kevo_repl.adapters.etcd_kv import EtcdKV
from kevo_repl.core.election import Failover, LeaderRecord, MemberRecord, OpTime, Scope
from kevo_repl.ha.group_status import group_doc, group_text
from kevo_repl.ha.local_etcd import ETCD_MISSING, LocalEtcd, etcd_binary
from kevo_repl.ha.scope import ScopeKeys, read_scope
from kevo_repl.node_status import NodeStatus
from kevo_repl.testing.ports import free_port, free_port_pair
from tests.cli_support import Spawned, kevo
from tests.nodes import Node, converged, wait_for

SCOPE = "ha-cmd"
MEMBERS = ("n1", "n2", "n3")


@dataclass
class Group:
    etcd: LocalEtcd
    nodes: dict[str, Node]
    kv: EtcdKV
    keys: ScopeKeys

    def cli(self, *args: str, timeout: float = 60.0) -> CompletedProcess[str]:
        """``kevo-repl ARGS --etcd URL --scope SCOPE``."""
        return kevo(*args, "--etcd", self.etcd.url, "--scope", SCOPE, timeout=timeout)

    def scope(self) -> Scope:
        return read_scope(self.kv, self.keys)

    def node_status(self, name: str) -> NodeStatus:
        with self.nodes[name].client(1000) as c:
            return NodeStatus.from_message(c.status_message())

    def whole(self) -> str | None:
        """The leader's id once the group is whole (see the module's docstring), in the
        nodes' own status and in their records in etcd alike; else None."""
        scope = self.scope()
        if scope.leader is None or set(scope.members) != set(MEMBERS):
            return None
        leader = scope.leader.id
        for name, node in self.nodes.items():
            node.assert_alive()
            record = scope.members[name]  # what etcd shows lags a turn behind the node
            if (record.role, record.status, record.leader) != (
                "primary" if name == leader else "replica",
                "ready",
                leader,
            ):
                return None
            s = self.node_status(name)
            if name == leader and (s.role != "primary" or s.fenced):
                return None
            if name != leader and (
                s.role != "replica" or s.status != "ready" or s.upstream != scope.leader.addr
            ):
                return None
        return leader

    def wait_whole(self) -> str:
        return wait_for("the group to be whole", self.whole, 60)

    def others(self, leader: str) -> list[str]:
        return sorted(m for m in MEMBERS if m != leader)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in self.nodes.values())


@pytest.fixture(scope="module")
def started_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING)
    root = tmp_path_factory.mktemp("ha")
    etcd = LocalEtcd(root / "etcd", free_port_pair()).start()
    nodes: dict[str, Node] = {}
    try:
        for name in MEMBERS:
            port = free_port_pair()
            argv = [sys.executable, "-m", "kevo_repl", "--log-format", "json", "node",
                    "--data", str(root / name), "--id", name, "--port", str(port),
                    "--etcd", etcd.url, "--scope", SCOPE, "--ttl-s", "3"]  # fmt: skip
            nodes[name] = Node(name, port, argv, root / f"{name}.log").start()
        group = Group(etcd, nodes, EtcdKV(etcd.url), ScopeKeys(SCOPE))
        group.wait_whole()
        yield group
    finally:
        for node in nodes.values():  # SIGCONT + SIGTERM by PID, SIGKILL if it hangs
            if node.proc is not None:
                node.stop()
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)  # preallocated store maps and etcd's WAL


@pytest.fixture
def group(started_group: Group, request: pytest.FixtureRequest) -> Iterator[Group]:
    yield started_group
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(started_group.logs())


def _put(group: Group, leader: str, prefix: str, count: int) -> int:
    lsn = 0
    with group.nodes[leader].client() as c:
        for i in range(count):
            lsn = c.put(f"{prefix}:{i}".encode(), f"v{i}".encode()).lsn
    return lsn


def _json(r: CompletedProcess[str]) -> Any:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_status_etcd_shows_the_leader_and_every_member(group: Group) -> None:
    leader = group.wait_whole()
    lsn = _put(group, leader, "st", 5)
    text = group.cli("status")
    assert text.returncode == 0, text.stderr
    addr = group.nodes[leader].address
    assert re.search(rf"^leader {leader} at {addr}, since .* ago\), LSN \d+", text.stdout, re.M)
    for name, node in group.nodes.items():
        role = "primary" if name == leader else "replica"
        row = rf"^{name}( \*)?\s+{node.address}\s+{role}\s+\w+\s+[0-9a-f]{{8}}\s+\d+"
        assert re.search(row, text.stdout, re.M), text.stdout
    assert "last change:" in text.stdout and "no leader" not in text.stdout

    def caught_up() -> Any:  # the records show the writes once each member republished
        doc = _json(group.cli("status", "--json"))
        return doc if all(m["durable_lsn"] >= lsn for m in doc["members"]) else None

    doc = wait_for("every record at the last write", caught_up, 20)
    assert doc["scope"] == SCOPE and doc["leader"]["id"] == leader
    assert doc["leader"]["addr"] == addr and doc["leader_lsn"] >= lsn
    members = {m["id"]: m for m in doc["members"]}
    assert set(members) == set(MEMBERS)
    for name, m in members.items():
        assert m["role"] == ("primary" if name == leader else "replica"), m
        assert m["is_leader"] == (name == leader) and m["leader"] == leader, m
        assert m["addr"] == group.nodes[name].address and m["etcd_ok"] is True, m
        assert m["lag_entries"] == 0 and m["bootstraps"] == 0 and m["age_s"] >= 0, m
    assert doc["last_failover"]["kind"] in ("initialize", "failover", "switchover")
    assert doc["switchover"] is None


def test_status_etcd_watch_refreshes_until_ctrl_c(group: Group) -> None:
    leader = group.wait_whole()
    watch = Spawned.start("status", "--etcd", group.etcd.url, "--scope", SCOPE,
                          "--json", "--watch", "--interval", "0.1")  # fmt: skip
    try:
        lines = watch.wait_lines(3)
        assert all(json.loads(line)["leader"]["id"] == leader for line in lines[:3]), lines
        watch.signal(signal.SIGINT)
        assert watch.wait() == 0
    finally:
        watch.kill()


def test_switchover_to_a_member_moves_the_leader_without_losing_anything(group: Group) -> None:
    old = group.wait_whole()
    target = group.others(old)[0]
    before = _put(group, old, "sw", 50)
    r = group.cli("switchover", "--to", target, "--timeout-ms", "10000")
    assert r.returncode == 0, (r.stdout, r.stderr)
    m = re.search(rf"switched over from {old} to {target} at LSN (\d+) in [\d.]+ s", r.stdout)
    assert m and int(m.group(1)) >= before, r.stdout
    assert group.scope().switchover is None  # the move removed the request
    assert group.wait_whole() == target

    new = _json(kevo("status", "--node", group.nodes[target].address, "--json"))
    assert new["role"] == "primary" and not new["fenced"], new
    was = _json(kevo("status", "--node", group.nodes[old].address, "--json"))
    assert was["role"] == "replica" and was["upstream"] == group.nodes[target].address, was
    last = _put(group, target, "after", 20)
    replicas = [group.nodes[n] for n in group.others(target)]
    digest = wait_for("every member at the same digest", lambda: converged(
        group.nodes[target], *replicas), 20)  # fmt: skip
    assert digest.lsn == last
    for name in group.others(target):
        s = _json(kevo("status", "--node", group.nodes[name].address, "--json"))
        assert s["bootstraps"] == 0, s
    assert all(r.bootstraps == 0 for r in group.node_status(target).followers)
    assert all(m["bootstraps"] == 0 for m in _json(group.cli("status", "--json"))["members"])


def test_switchover_without_to_picks_another_member(group: Group) -> None:
    old = group.wait_whole()
    doc = _json(group.cli("switchover", "--json", "--timeout-ms", "10000"))
    assert doc["from"] == old and doc["to"] in group.others(old), doc
    assert doc["lsn"] >= 0 and doc["took_s"] > 0
    assert group.wait_whole() == doc["to"]


def test_switchover_to_an_unknown_member_exits_1_naming_it(group: Group) -> None:
    leader = group.wait_whole()
    r = group.cli("switchover", "--to", "no-such-member")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no-such-member" in r.stderr and "no live member" in r.stderr, r.stderr
    assert group.scope().switchover is None  # the refused request was removed
    assert group.whole() == leader


def test_a_second_switchover_is_refused_while_one_is_pending(group: Group) -> None:
    """The target is stopped, so the first request stays pending: the second is refused.
    The target stays stopped until its lease ends, so the leader's handover then fails on
    that lease (the first client says so, exit 1), and the old leader takes writes again."""
    leader = group.wait_whole()
    target, other = group.others(leader)
    group.nodes[target].signal(signal.SIGSTOP)
    first: Spawned | None = None
    try:
        _put(group, leader, "pending", 1)  # the target lacks it: the handover must wait
        first = Spawned.start("switchover", "--etcd", group.etcd.url, "--scope", SCOPE,
                              "--to", target, "--timeout-ms", "20000")  # fmt: skip
        pending = wait_for("the request in etcd", lambda: group.scope().switchover, 20)
        assert pending["to"] == target and "error" not in pending
        second = group.cli("switchover", "--to", other)
        assert second.returncode == 1, (second.stdout, second.stderr)
        assert "already pending" in second.stderr and target in second.stderr, second.stderr
        shown = group.cli("status")
        assert f"pending switchover to {target}" in shown.stdout, shown.stdout
        wait_for("the stopped target's lease to end", lambda: target not in group.scope().members)
    finally:
        group.nodes[target].signal(signal.SIGCONT)
    assert first is not None
    assert first.wait(40) == 1, first.output()
    assert "lease has expired" in first.output(), first.output()
    assert group.scope().switchover is None
    assert group.wait_whole() == leader
    _put(group, leader, "writable", 1)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["status"], "exactly one of them"),
        (["status", "--node", "127.0.0.1:7100", "--etcd", "http://127.0.0.1:2379"], "exactly one"),
        (["switchover", "--to", "n2"], "exactly one of them"),
        (["switchover", "--node", "127.0.0.1:7100"], "needs --to HOST:PORT"),
        (["switchover", "--node", "127.0.0.1:7100", "--to", "n2"], "must be HOST:PORT"),
        (["status", "--etcd", "ftp://127.0.0.1:2379"], "only http:// is supported"),
        (["status", "--etcd", "http://127.0.0.1:2379", "--ready"], "use it with --node"),
    ],
)
def test_misused_node_and_etcd_flags_exit_2_with_usage(argv: list[str], needle: str) -> None:
    r = kevo(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "usage: kevo-repl" in r.stderr and needle in r.stderr, r.stderr


@pytest.mark.parametrize("command", [["status"], ["switchover", "--to", "n2"]])
def test_unreachable_etcd_exits_3_naming_it(command: list[str]) -> None:
    port = free_port()  # nothing listens on it
    r = kevo(*command, "--etcd", f"http://127.0.0.1:{port}")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"etcd at 127.0.0.1:{port} did not answer" in r.stderr, r.stderr


def _member(name: str, lsn: int, role: str = "replica") -> MemberRecord:
    return MemberRecord(name, f"h:{lsn}", role, "ready", history="ab" * 16, timeline=2,
                        lsn=lsn, applied_lsn=lsn, promotable=True, updated_ms=9_000)  # fmt: skip


def test_no_leader_is_said_plainly_with_lag_against_the_last_leader() -> None:
    scope = Scope(
        revision=7,
        members={"a": _member("a", 90), "b": _member("b", 100)},
        optime=OpTime("c", "h:1", 120, 2),
        last_failover=Failover("failover", "c", "a", 5_000, 80),
    )
    doc = group_doc(scope, "s", "e:2379", now_ms=10_000)
    assert doc["leader"] is None and doc["leader_lsn"] == 120
    assert [m["lag_entries"] for m in doc["members"]] == [30, 20]
    assert [m["age_s"] for m in doc["members"]] == [1.0, 1.0]
    text = group_text(doc, 10_000)
    assert "no leader (the last one was c at LSN 120)" in text
    assert "last change: failover from a to c at" in text and "LSN 80" in text
    assert json.loads(json.dumps(doc)) == doc


def test_a_pending_and_a_refused_switchover_are_shown() -> None:
    base = Scope(
        revision=3,
        leader=LeaderRecord("a", "h:1", 1_000),
        members={"a": _member("a", 50, "primary"), "b": _member("b", 45)},
        switchover={"id": "x1", "to": "b", "timeout_s": 30},
    )
    doc = group_doc(base, "s", "e:2379", now_ms=2_000)
    assert doc["leader_lsn"] == 50 and [m["lag_entries"] for m in doc["members"]] == [0, 5]
    text = group_text(doc, 2_000)
    assert "leader a at h:1, since" in text and "pending switchover to b" in text
    assert re.search(r"^a \*\s+h:50\s+primary", text, re.M), text
    refused = {"id": "x1", "to": "", "timeout_s": 30, "error": "no member can take over"}
    text = group_text(group_doc(Scope(revision=4, switchover=refused), "s", "e", 0), 0)
    assert "refused switchover to (the most advanced member)" in text
    assert "no member can take over" in text and "no live members" in text
    assert "no member has ever joined this scope" in text
