"""Forgetting a departed follower: by command (admin only with CURVE) and by age."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_support import kevo
from tests.nodes import Cluster, Node, wait_for
from tests.test_security import _start_secure, keys  # noqa: F401  (keys: a fixture)


def _listed(node: Node, *extra: str) -> dict[str, str]:
    out = kevo("status", "--node", node.address, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return {r["id"]: r["status"] for r in json.loads(out.stdout)["replicas"]}


def test_forget_removes_a_departed_follower_and_refuses_a_live_one(cluster: Cluster) -> None:
    primary = cluster.primary()
    cluster.replica("r1", primary)
    r2 = cluster.replica("r2", primary)
    wait_for("both listed", lambda: set(_listed(primary)) == {"r1", "r2"})
    assert r2.stop() == 0
    wait_for("r2 disconnected", lambda: _listed(primary).get("r2") == "disconnected")
    out = kevo("forget", "--node", primary.address, "--replica", "r1")
    assert out.returncode == 1 and "r1 is connected" in out.stderr, out.stderr
    out = kevo("forget", "--node", primary.address, "--replica", "nobody")
    assert out.returncode == 1 and "no follower 'nobody' is known (known: r1, r2)" in out.stderr
    out = kevo("forget", "--node", primary.address, "--replica", "r2")
    assert out.returncode == 0 and out.stdout.startswith("forgot r2"), out.stderr
    assert set(_listed(primary)) == {"r1"}


def test_a_follower_silent_past_forget_after_leaves_by_itself(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--forget-after-s", "2")
    r1 = cluster.replica("r1", primary)
    wait_for("listed", lambda: "r1" in _listed(primary))
    assert r1.stop() == 0
    wait_for("forgotten by age", lambda: "r1" not in _listed(primary), 30)


def test_forget_needs_the_admin_role(cluster: Cluster, keys: Path) -> None:  # noqa: F811
    primary = _start_secure(cluster, keys, "primary", "primary")
    key = ("--keys", str(keys), "--key-name")
    out = kevo("forget", "--node", primary.address, "--replica", "r9", *key, "app")
    assert out.returncode == 1 and "may not send forget requests" in out.stderr, out.stderr
    out = kevo("forget", "--node", primary.address, "--replica", "r9", *key, "ops")
    assert out.returncode == 1 and "no follower 'r9'" in out.stderr, out.stderr
