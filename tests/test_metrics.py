"""``--metrics-port``: real nodes serve the named Prometheus series with live values."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from kevo_repl.testing.ports import free_port, free_port_pair
from tests.cli_support import kevo
from tests.nodes import Cluster, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


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
    assert value(p, "kevo_replica_lag_ms", replica="r1") == 0
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
