"""Backup, restore and scan, CLI-driven: consistent reads over the bootstrap stream."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from kevo_repl.client import batch_request
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.nodes import Cluster, converged, wait_for
from tests.test_replication_e2e import write_batches
from tests.test_security import _start_secure, keys  # noqa: F401  (keys: a fixture)


def test_scan_reads_a_prefix_in_key_order_from_one_snapshot(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        c.batch([(b"a:%03d" % i, b"v%d" % i) for i in range(50)])
        c.batch([(b"b:%d" % i, b"w\t%d" % i) for i in range(10)] + [(b"a:007", None)])
    out = kevo(
        "scan", "--node", primary.address, "--prefix", "a:", "--limit", "5", "--format", "json"
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["key"] for r in rows] == ["a:000", "a:001", "a:002", "a:003", "a:004"]
    assert rows[0] == {"key": "a:000", "value": "v0", "lsn": 61}
    out = kevo("scan", "--node", primary.address, "--prefix", "a:")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 49  # a:007 deleted
    assert "a:007" not in out.stdout
    out = kevo("scan", "--node", primary.address, "--prefix", "b:", "--chunk-bytes", "4096")
    assert out.stdout.splitlines()[0] == "b:0\tw\\t0"  # tabs in values escaped in text
    replica = cluster.replica("r1", primary)
    wait_for("replica caught up", lambda: converged(primary, replica))
    out = kevo("scan", "--node", replica.address)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 59


def test_a_backup_taken_under_writes_restores_as_a_replica_and_as_a_primary(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    with primary.client(30_000) as c:  # 1M keys, in pipelined batches of 1000
        reqs = [
            batch_request([(b"key-%07d" % (b * 1000 + i), b"v" * 100) for i in range(1000)])
            for b in range(1000)
        ]
        assert all(r.WhichOneof("body") == "write" for r in c.call_many(reqs, window=16))
    stop = threading.Event()
    written = [0]

    def write_on() -> None:  # writes go on during the backup: hot keys, bounded
        with primary.client() as w:
            for i in range(50_000):
                if stop.is_set():
                    return
                w.put(b"hot-%d" % (i % 10), b"%d" % i)
                written[0] = i + 1

    writer = threading.Thread(target=write_on)
    writer.start()
    wait_for("writes going on", lambda: written[0] > 100)
    try:
        out = kevo(
            "backup", "--node", primary.address, "--out", str(tmp_path / "b"), "--json", timeout=300
        )
    finally:
        stop.set()
        writer.join(60)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["keys"] >= 1_000_000 and manifest["lsn"] > 1_000_000
    with primary.client() as c:  # the writes went on past the snapshot while it streamed
        assert c.status_message().lsn > manifest["lsn"]
    # a backup is not a primary: it would write its history's next LSNs a second time
    refused = kevo("primary", "--data", str(tmp_path / "b"), "--port", "7")
    assert refused.returncode == 1 and "is a backup of" in refused.stderr, refused.stderr
    # as a replica: it catches up from the backup's LSN, no bootstrap
    out = kevo("restore", "--from", str(tmp_path / "b"), "--data", str(cluster.root / "r1"))
    assert out.returncode == 0, out.stderr
    r1 = cluster.replica("r1", primary)
    wait_for("the restored replica converges", lambda: converged(primary, r1), 120)
    assert count_events(r1.log_path, "bootstrap_start") == 0
    # as a primary: a new history forked at the backup's LSN
    out = kevo(
        "restore", "--from", str(tmp_path / "b"), "--data", str(cluster.root / "p2"),
        "--new-history",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    p2 = cluster.primary("p2")
    doc = json.loads(kevo("status", "--node", p2.address, "--json").stdout)
    assert doc["lsn"] == manifest["lsn"] and len(doc["history"]) == 2
    assert doc["history"][1]["fork_lsn"] == manifest["lsn"]
    with p2.client() as c:
        assert c.digest().keys == manifest["keys"]
        assert c.get(b"key-0999999") == b"v" * 100


def test_backup_needs_the_admin_or_replica_role(
    cluster: Cluster,
    keys: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    key = ("--keys", str(keys), "--key-name")
    out = kevo("backup", "--node", primary.address, "--out", str(tmp_path / "x"), *key, "app")
    assert out.returncode == 1 and "may not send bootstrap requests" in out.stderr, out.stderr
    assert not (tmp_path / "x").exists()  # a failed backup leaves nothing behind
    out = kevo("backup", "--node", primary.address, "--out", str(tmp_path / "y"), *key, "ops")
    assert out.returncode == 0, out.stderr
    out = kevo("scan", "--node", primary.address, *key, "ro")  # any reader may scan
    assert out.returncode == 0, out.stderr


def test_backup_progress_is_a_bar_on_stderr_and_stdout_stays_clean(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    write_batches(primary, batches=5, size=200)
    out = kevo("backup", "--node", primary.address, "--out", str(tmp_path / "b"), "--progress")
    assert out.returncode == 0, out.stderr
    bar = [line for line in out.stderr.splitlines() if line.startswith("backup of")]
    assert bar and "100%" in bar[-1] and re.search(r" (\d+)/\1 keys ", bar[-1]), out.stderr
    assert "━" not in out.stdout and "\x1b" not in out.stdout
