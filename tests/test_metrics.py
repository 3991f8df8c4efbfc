"""``--metrics-port``: real nodes serve the named Prometheus series with live values.

The histograms and counters are checked against what the test itself did (requests sent,
entries written, one refused write), every scrape passes ``promtool check metrics``, and
docs/metrics.md lists exactly the families a primary and a replica serve.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kevo_repl.client import Client, RemoteError
from kevo_repl.core.histogram import Histogram
from kevo_repl.testing.ports import free_port, free_port_pair
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.metrics_support import (
    Samples,
    family_types,
    parse,
    scrape,
    scrape_text,
    started_pair,
    value,
)
from tests.nodes import Cluster, wait_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
HISTOGRAMS = (
    "kevo_commit_duration_seconds",
    "kevo_wal_fsync_duration_seconds",
    "kevo_commit_group_entries",
    "kevo_apply_duration_seconds",
)


def test_primary_and_replica_serve_metrics(cluster: Cluster) -> None:
    pm, rm = free_port(), free_port()
    primary = cluster.primary("primary", "--metrics-port", str(pm))
    load = kevo("load", "--node", primary.address, "--batch", "10",
                input="".join(f"m{i}\tv{i}\n" for i in range(50)))  # fmt: skip
    assert load.returncode == 0, load.stderr
    # Joining after the writes, the replica catches up over WalSync.
    cluster.replica("r1", primary, "--metrics-port", str(rm))

    def primary_caught_up() -> Samples | None:
        s = scrape(pm)
        at = value(s, "kevo_replica_applied_lsn", replica="r1") == 50
        ready = value(s, "kevo_replica_status", replica="r1", status="ready") == 1
        return s if at and ready else None

    p = wait_for("the primary's metrics show r1 ready at LSN 50", primary_caught_up, timeout_s=10)
    assert value(p, "kevo_lsn") == 50
    assert value(p, "kevo_applied_lsn") == 50
    assert value(p, "kevo_durable_lsn") == 50
    assert value(p, "kevo_wal_last_lsn") == 50
    assert value(p, "kevo_wal_retained_from_lsn") == 1
    assert value(p, "kevo_wal_size_bytes") > 0
    assert value(p, "kevo_entries_published_total") == 50
    assert 1 <= value(p, "kevo_batches_published_total") <= 5
    assert value(p, "kevo_bytes_published_total") > 50 * 4
    assert value(p, "kevo_catchups_served_total") >= 1  # the replica's join
    assert value(p, "kevo_bootstraps_served_total") == 0
    assert value(p, "kevo_replica_lag_entries", replica="r1") == 0
    assert value(p, "kevo_replica_lag_seconds", replica="r1") == 0
    assert value(p, "kevo_replica_status", replica="r1", status="ready") == 1
    assert value(p, "kevo_replicas") == 1
    info = [k for k in p if k[0] == "kevo_node_info"]
    assert dict(info[0][1])["role"] == "primary"
    assert ("process_resident_memory_bytes", ()) in p

    def replica_caught_up() -> Samples | None:
        s = scrape(rm)
        return s if value(s, "kevo_lsn") == 50 else None

    r = wait_for("replica metrics at 50", replica_caught_up)
    assert value(r, "kevo_applied_lsn") == 50
    assert value(r, "kevo_status", status="ready") == 1
    assert value(r, "kevo_bootstraps_total") == 0
    assert value(r, "kevo_catchups_total") >= 1
    assert ("kevo_gaps_total", ()) in r
    assert ("kevo_lag_entries", ()) in r


def test_metrics_port_in_use_is_a_clear_error(cluster: Cluster) -> None:
    pm = free_port()
    cluster.primary("primary", "--metrics-port", str(pm))
    second = free_port_pair()
    r = kevo("primary", "--data", str(cluster.root / "second"), "--port", str(second),
             "--metrics-port", str(pm))  # fmt: skip
    assert r.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{pm}" in r.stderr


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram([0.001, 0.01, 1.0])
    for v in (0.0005, 0.001, 0.002, 0.01, 5.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.buckets == ((0.001, 2), (0.01, 4), (1.0, 4), (float("inf"), 5))
    assert snap.count == 5 and snap.sum == pytest.approx(5.0135)
    with pytest.raises(ValueError, match="increasing"):
        Histogram([1.0, 1.0])


def check_histogram(samples: Samples, name: str) -> float:
    """Buckets non-decreasing in ``le``, +Inf equal to the count; returns the count."""
    bucket = f"{name}_bucket"
    buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in samples.items() if n == bucket)
    assert buckets, f"{name} has no buckets"
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets decrease: {buckets}"
    assert buckets[-1][0] == float("inf")
    count = value(samples, f"{name}_count")
    assert buckets[-1][1] == count and value(samples, f"{name}_sum") >= 0
    return count


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_write_path_histograms_and_request_counters(cluster: Cluster) -> None:
    primary, pm, replica, rm = started_pair(cluster)
    ready = ("kevo_replica_status", (("replica", "r1"), ("status", "ready")))
    wait_for("r1 ready on the primary", lambda: scrape(pm).get(ready) == 1)
    p0, r0 = scrape(pm), scrape(rm)
    puts, batches, per_batch = 12, 3, 5
    with primary.client() as c:
        for i in range(puts):
            c.put(f"p{i}".encode(), b"v")
        for i in range(batches):
            c.batch([(f"b{i}-{j}".encode(), b"v") for j in range(per_batch)])
        with pytest.raises(RemoteError) as timed_out:  # a read waiting for an LSN never written
            c.get(b"p0", min_lsn=10**9, timeout_ms=50)
        assert timed_out.value.code == pb.ERROR_TIMEOUT
    refused = 2
    with Client(replica.address, follow_redirects=False) as rc:
        for _ in range(refused):
            with pytest.raises(RemoteError) as not_primary:
                rc.put(b"r", b"v")
            assert not_primary.value.code == pb.ERROR_NOT_PRIMARY
    total = puts + batches * per_batch

    p = scrape(pm)
    assert delta(p, p0, "kevo_requests_total", kind="put") == puts
    assert delta(p, p0, "kevo_requests_total", kind="batch") == batches
    assert delta(p, p0, "kevo_requests_total", kind="get") == 1
    assert delta(p, p0, "kevo_error_responses_total", code="timeout") == 1
    assert delta(p, p0, "kevo_error_responses_total", code="not_primary") == 0
    for name in HISTOGRAMS:
        assert 1 <= check_histogram(p, name) <= puts + batches
    assert value(p, "kevo_commit_group_entries_sum") == total  # every entry, in some group
    assert value(p, "kevo_replica_lag_seconds", replica="r1") >= 0

    def replica_published() -> Samples | None:
        s = scrape(rm)
        done = s[("kevo_visible_lsn", ())] == total
        return s if done and value(s, "kevo_commit_group_entries_sum") == total else None

    r = wait_for("the replica to publish every entry", replica_published)
    assert delta(r, r0, "kevo_requests_total", kind="put") == refused
    assert delta(r, r0, "kevo_error_responses_total", code="not_primary") == refused
    for name in HISTOGRAMS:
        assert check_histogram(r, name) >= 1


def test_scrapes_pass_promtool_and_the_doc_lists_every_family(cluster: Cluster) -> None:
    primary, pm, replica, rm = started_pair(cluster)
    with primary.client() as c:
        c.put(b"k", b"v")
    with Client(replica.address, follow_redirects=False) as rc, pytest.raises(RemoteError):
        rc.put(b"k", b"v")
    wait_for("the replica to apply", lambda: scrape(rm)[("kevo_applied_lsn", ())] == 1)
    texts = {"primary": scrape_text(pm), "replica": scrape_text(rm)}
    assert value(parse(texts["replica"]), "kevo_error_responses_total", code="not_primary") == 1

    served = {n for t in texts.values() for n in family_types(t) if n.startswith("kevo_")}
    documented = set(re.findall(r"^\| `(kevo_[a-z_]+)", DOC.read_text(), re.MULTILINE))
    assert documented == served, (
        f"only in docs/metrics.md: {documented - served}; not documented: {served - documented}"
    )

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus); lint not checked")
    for node, text in texts.items():
        r = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        lint = (r.stdout + r.stderr).strip()
        assert r.returncode == 0 and not lint, f"promtool on the {node}'s metrics: {lint}"
