"""The primary's sync policy (--sync-replicas K --sync-timeout-ms T [--sync-refuse]),
CLI-driven against real node processes, under pipelined writes."""

from __future__ import annotations

import json

from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.nodes import Cluster, Node, wait_for


def _sync(node: Node) -> dict[str, object]:
    out = kevo("status", "--node", node.address, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, object] = json.loads(out.stdout)["sync"]
    return doc


def _ready(primary: Node, n: int) -> bool:
    out = kevo("status", "--node", primary.address, "--json")
    replicas: list[dict[str, str]] = json.loads(out.stdout)["replicas"]
    return sum(r["status"] == "ready" for r in replicas) == n


def test_every_write_waits_for_the_policy_replicas(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--sync-replicas", "1", "--sync-timeout-ms", "5000")
    r1 = cluster.replica("r1", primary)
    wait_for("r1 ready", lambda: _ready(primary, 1))
    assert _sync(primary) == {"replicas": 1, "timeout_ms": 5000, "refuse": False}
    text = kevo("status", "--node", primary.address).stdout
    assert "every write waits for 1 replica(s), up to 5000 ms" in text
    with primary.client(10_000) as c:  # none of these asks to wait: the policy does
        reqs = [
            pb.Request(put=pb.PutRequest(key=b"k%d" % (i % 7), value=b"%d" % i)) for i in range(500)
        ]
        answers = c.call_many(reqs, window=64)
    writes = [a.write for a in answers]
    assert all(w.replicas_applied >= 1 and not w.wait_timed_out for w in writes)
    out = kevo("put", "--node", primary.address, "one", "v")
    assert out.returncode == 0 and "replicas applied: 1 (the primary's policy)" in out.stderr
    assert r1.stop() == 0
    with primary.client(5000) as c:  # committed, and honestly said to be unconfirmed
        w = c.put(b"alone", b"v", timeout_ms=300)
    assert w.wait_timed_out and w.replicas_applied == 0
    with primary.client() as c:
        assert c.get(b"alone") == b"v"


def test_sync_refuse_writes_nothing_while_too_few_replicas_are_connected(
    cluster: Cluster,
) -> None:
    flags = ("--sync-replicas", "1", "--sync-timeout-ms", "5000", "--sync-refuse")
    primary = cluster.primary("primary", *flags)
    out = kevo("put", "--node", primary.address, "early", "v")
    assert out.returncode == 1 and "0 are connected: nothing was written" in out.stderr, out.stderr
    r1 = cluster.replica("r1", primary)
    wait_for("r1 ready", lambda: _ready(primary, 1))
    out = kevo("put", "--node", primary.address, "k", "v")
    assert out.returncode == 0 and "replicas applied: 1" in out.stderr, out.stderr
    assert r1.stop() == 0
    wait_for("r1 seen gone", lambda: _ready(primary, 0))
    with primary.client() as c:
        before = c.digest()
    out = kevo("put", "--node", primary.address, "late", "v")
    assert out.returncode == 1 and "nothing was written" in out.stderr
    with primary.client() as c:
        assert c.digest() == before and c.get(b"late") is None and c.get(b"early") is None
    assert _sync(primary)["refuse"] is True
