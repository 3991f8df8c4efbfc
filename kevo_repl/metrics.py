"""``--metrics-port``: Prometheus text read from the node's own objects at scrape time.

A custom collector is handed the node and reads its plain attributes (WAL positions, store
LSN, registry, counters) when Prometheus scrapes, so the hot path keeps no metric objects and
pays nothing per entry. The reads happen on the HTTP server's thread while the node loop runs:
they are single attribute reads of ints (atomic under the GIL) and a copy of the registry's
replica list; a value may be one turn stale, never torn. The LMDB store itself is not opened
from that thread (a bootstrap swaps it), so no key count is exported.

The write and apply paths record into fixed-bucket ``Histogram``s (``NodeStats``: a bisect
and two additions per group commit), turned into histogram families here. Durations are in
seconds and sizes in entries, as ``promtool check metrics`` wants base units; every label
value comes from the protocol's enums or the registry's replica ids, never from a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.core.histogram import INF, Histogram
from kevo_repl.node.stats import ERROR_NAMES, NodeStats
from kevo_repl.wire import pb

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["MetricsServer", "NodeCollector", "serve_metrics"]

_STATUS_NAMES = ("connecting", "syncing", "bootstrapping", "ready", "disconnected", "error")


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, hist: Histogram) -> Metric:
    snap = hist.snapshot()
    buckets = [("+Inf" if bound == INF else repr(bound), float(n)) for bound, n in snap.buckets]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snap.sum)


def _by_label(name: str, doc: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in counts.items():
        family.add_metric([value], n)
    return family


def _info(node_id: str, role: str, history_id: bytes) -> Metric:
    info = GaugeMetricFamily(
        "kevo_node_info", "Always 1; labels name the node.", labels=["node", "role", "history_id"]
    )
    info.add_metric([node_id, role, history_id.hex()], 1)
    return info


class NodeCollector(Collector):
    """Series of a node: LSNs, WAL range and size, publishing, its followers; and for a
    replica its own status and counters against its upstream."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        wal, c = node.wal, node.counters
        primary = node.role == pb.ROLE_PRIMARY
        role = "primary" if primary else "replica"
        yield _info(node.config.node_id, role, node.state.chain.current)
        yield _gauge("kevo_lsn", "Last LSN applied to the store.", node.store.applied_lsn)
        yield _gauge("kevo_applied_lsn", "Last LSN applied to the store.", node.store.applied_lsn)
        yield _gauge("kevo_durable_lsn", "Last LSN on disk (WAL fsynced).", wal.durable_lsn)
        yield _gauge(
            "kevo_visible_lsn",
            "Last LSN published and served (a primary's are durable).",
            node.visible_lsn,
        )
        yield _gauge(
            "kevo_wal_retained_from_lsn",
            "First LSN the WAL still holds (catch-up below it needs a bootstrap).",
            wal.retained_from_lsn,
        )
        yield _gauge("kevo_wal_last_lsn", "Last LSN the WAL holds.", wal.last_lsn)
        yield _gauge("kevo_wal_size_bytes", "Bytes of WAL on disk.", wal.size_bytes)
        yield _counter("kevo_batches_published", "Batches published on PUB.", c.batches_published)
        yield _counter("kevo_entries_published", "Entries published on PUB.", c.entries_published)
        yield _counter("kevo_bytes_published", "Bytes published on PUB.", c.bytes_published)
        yield _counter("kevo_catchups_served", "WalSync requests answered.", c.catchups_served)
        yield _counter("kevo_bootstraps_served", "Bootstrap sessions started.", c.bootstraps_served)
        yield _counter(
            "kevo_compressed_raw_bytes",
            "Bytes compressed for followers (stream, WalSync, bootstrap chunks).",
            c.compressed_raw_bytes,
        )
        yield _counter(
            "kevo_compressed_wire_bytes", "What they became on the wire.", c.compressed_wire_bytes
        )
        yield from _stats(node.stats)
        yield from self._replicas()
        if not primary:
            yield from self._following()

    def _following(self) -> Iterator[Metric]:
        from kevo_repl.node.upstream_source import UpstreamSource

        source = self.node.source
        if not isinstance(source, UpstreamSource):
            return
        f = source.follower
        yield _gauge("kevo_primary_lsn", "The upstream's LSN as last heard.", f.primary_lsn)
        lag = max(0, f.primary_lsn - f.applied_lsn)
        yield _gauge("kevo_lag_entries", "Entries behind the upstream, as last heard.", lag)
        status = GaugeMetricFamily("kevo_status", "1 for the current status.", labels=["status"])
        for name in _STATUS_NAMES:
            status.add_metric([name], 1 if f.status.name.lower() == name else 0)
        yield status
        counters = f.counters
        yield _counter("kevo_catchups", "WalSync catch-ups run.", counters.catchups)
        yield _counter("kevo_bootstraps", "Bootstraps run.", counters.bootstraps)
        yield _counter("kevo_gaps", "Gaps detected in the stream.", counters.gaps)
        link = source.link
        yield _counter(
            "kevo_upstream_wire_bytes", "Bytes received from the upstream.", link.wire_bytes
        )
        yield _counter("kevo_upstream_raw_bytes", "The same, inflated.", link.raw_bytes)

    def _replicas(self) -> Iterator[Metric]:
        registry = self.node.followers
        now = monotonic_ms()
        replicas = _copy_list(registry.replicas)
        labels = ["replica"]
        lag = GaugeMetricFamily("kevo_replica_lag_entries", "Entries behind.", labels=labels)
        lag_s = GaugeMetricFamily(
            "kevo_replica_lag_seconds", "Age of the oldest commit not yet applied.", labels=labels
        )
        applied = GaugeMetricFamily(
            "kevo_replica_applied_lsn", "LSN the replica acknowledged.", labels=labels
        )
        status = GaugeMetricFamily(
            "kevo_replica_status", "1 for the replica's current status.", labels=[*labels, "status"]
        )
        kinds = ("write", "flush", "replay")  # PostgreSQL's three (docs/protocol.md)
        lags = {
            k: GaugeMetricFamily(
                f"kevo_replica_{k}_lag_seconds",
                f"pg_stat_replication's {k}_lag, measured here from commit times.",
                labels=labels,
            )
            for k in kinds
        }
        for r in replicas:
            rid = [r.replica_id]
            lag.add_metric(rid, registry.lag_entries(r))
            lag_s.add_metric(rid, registry.lag_ms(r, now) / 1000)
            for k, value in zip(kinds, registry.lags_s(r, now), strict=True):
                lags[k].add_metric(rid, value)
            applied.add_metric(rid, r.applied_lsn)
            for name in _STATUS_NAMES:
                status.add_metric([r.replica_id, name], 1 if r.status.name.lower() == name else 0)
        yield from (lag, lag_s, applied, status, *lags.values())
        yield _gauge("kevo_replicas", "Replicas registered.", len(replicas))


def _stats(stats: NodeStats) -> Iterator[Metric]:
    """The write/apply path's histograms (a replica's group is one drain of its upstream's
    records) and the ROUTER's requests and error answers."""
    yield _histogram(
        "kevo_commit_duration_seconds",
        "Group commit latency: from taking a group (a replica: appending a drain) until it is "
        "durable and published.",
        stats.commit_seconds,
    )
    yield _histogram("kevo_wal_fsync_duration_seconds", "One WAL fdatasync.", stats.fsync_seconds)
    yield _histogram("kevo_commit_group_entries", "Entries per group commit.", stats.group_entries)
    yield _histogram(
        "kevo_apply_duration_seconds",
        "Store apply of one group commit (one LMDB transaction per history).",
        stats.apply_seconds,
    )
    yield _by_label(
        "kevo_requests", "Requests taken on the ROUTER, by kind.", "kind", dict(stats.requests)
    )
    errors = {ERROR_NAMES[code]: n for code, n in dict(stats.errors).items()}
    yield _by_label("kevo_error_responses", "Error answers sent, by code.", "code", errors)


def _copy_list(get: Any) -> list[Any]:
    """The registry's replica list; retried if the node loop changed it mid-copy."""
    for _ in range(5):
        try:
            return list(get())
        except RuntimeError:
            continue
    return []


class MetricsServer:
    """The HTTP endpoint; ``close`` stops it (the node's shutdown path calls it)."""

    def __init__(self, server: Any, thread: Any, address: str) -> None:
        self._server = server
        self._thread = thread
        self.address = address

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(collector: Collector, host: str, port: int) -> MetricsServer:
    """Serve ``collector`` and the process's own series (memory, CPU, fds) on ``host:port``.

    Raises ``OSError`` when the port cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, f"{host}:{port}")
