"""Lag over time, as pg_stat_replication shows it: write, flush and replay lag in seconds
measured on the upstream from its commit times, throughput over the last 10 s, and a
replica's own lag behind its upstream; all through the CLI."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import kevo_repl
from kevo_repl.status_format import status_text
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.nodes import Cluster, Node, wait_for
from tests.test_replication_e2e import write_batches


def _status(node: Node) -> dict[str, Any]:
    out = kevo("status", "--node", node.address, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _follower(primary: Node, rid: str) -> dict[str, Any] | None:
    return next((r for r in _status(primary)["replicas"] if r["id"] == rid), None)


def test_a_paused_replicas_lag_grows_in_seconds_and_recovers(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    write_batches(primary, batches=20, size=50, value_bytes=100)  # 1000 entries
    caught = wait_for(
        "caught up", lambda: (f := _follower(primary, "r1")) and f["lag_entries"] == 0 and f
    )
    assert caught["received_lsn"] == caught["applied_lsn"] == 1000
    for name in ("write_lag_s", "flush_lag_s", "replay_lag_s"):
        assert 0 <= caught[name] < 5, caught  # the delivery time of the last commit
    assert caught["entries_per_s"] > 0 and caught["bytes_per_s"] > 100 * caught["entries_per_s"]
    assert _status(primary)["entries_per_s"] > 0

    replica.signal(signal.SIGSTOP)
    try:
        write_batches(primary, batches=1, size=10, value_bytes=100)
        paused_at = time.monotonic()
        behind = wait_for(
            "replay lag past 1 s",
            lambda: (f := _follower(primary, "r1")) and f["replay_lag_s"] > 1.0 and f,
        )
        assert behind["lag_entries"] == 10
        # While behind, each lag is the age of the oldest commit not reached: it grows.
        elapsed = time.monotonic() - paused_at
        assert behind["replay_lag_s"] <= elapsed + 0.5, (behind, elapsed)
        assert behind["flush_lag_s"] >= behind["replay_lag_s"] - 0.01
    finally:
        replica.signal(signal.SIGCONT)
    after = wait_for(
        "recovered",
        lambda: (f := _follower(primary, "r1")) and f["lag_entries"] == 0 and f,
    )
    # The commit made while it was paused took over a second to arrive: that is measured.
    assert after["replay_lag_s"] > 1.0, after
    own = wait_for(
        "the replica's own view",
        lambda: (s := _status(replica))["upstream_lsn"] == 1010 and s["replay_lag_s"] > 1.0 and s,
    )
    assert own["lag_entries"] == 0 and own["applied_lsn"] == 1010
    text = kevo("status", "--node", replica.address).stdout
    assert "behind its upstream: 0 entries (upstream LSN 1010)" in text, text
    text = kevo("status", "--node", primary.address).stdout
    assert "REPLAY_LAG" in text and "ENTRIES/S" in text and "r1" in text, text

    # The Python client's status is typed: names, not enum numbers; history ids as hex.
    with primary.client() as c:
        typed = c.status()
    assert isinstance(typed, kevo_repl.NodeStatus) and typed.role == "primary" and typed.ready
    assert typed.history_id == _status(primary)["history_id"] and len(typed.history_id) == 32
    (f,) = typed.followers
    assert (f.id, f.status, f.applied_lsn, f.lag_entries) == ("r1", "ready", 1010, 0)
    assert f.replay_lag_s > 1.0
    with replica.client() as c:
        mine = c.status()
    assert (mine.role, mine.status, mine.upstream_lsn, mine.lag_entries) == (
        "replica", "ready", 1010, 0,
    )  # fmt: skip
    assert mine.history_id == typed.history_id and mine.ready


def test_text_status_shows_a_running_bootstraps_progress() -> None:
    s = pb.StatusResponse(
        role=pb.ROLE_PRIMARY,
        node_id="p",
        replicas=[
            pb.ReplicaInfo(
                replica_id="r9", status=pb.STATUS_BOOTSTRAPPING, bootstrap_progress=0.4213
            )
        ],
    )
    text = status_text(s)
    assert "bootstrapping 42.1%" in text and "BOOTSTRAP" in text and "━" * 8 in text, text
    s = pb.StatusResponse(
        role=pb.ROLE_REPLICA,
        node_id="r9",
        status=pb.STATUS_BOOTSTRAPPING,
        bootstrap_progress=0.5,
    )
    text = status_text(s)
    assert "r9: bootstrapping 50.0%" in text and "\n" + "━" * 10 + "\n" in text, text
