"""One node's settings. A node with an ``upstream`` follows it (a replica); one without is a
primary. Every node keeps a WAL, a store and a history chain, and serves the same
replication side; only where its records come from differs (``node/node.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kevo_repl.wire.batch import DEFAULT_LIMITS, WireLimits

__all__ = ["MIB", "POLL_MS", "NodeConfig"]

MIB = 1024 * 1024
POLL_MS = 20  # a node loop's poll timeout when its source has nothing due sooner


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    node_id: str = "primary"
    upstream: str = ""  # HOST:PORT of the node to follow ("": this node is a primary)
    bind: str = "127.0.0.1"
    port: int = 7100
    advertise: str = ""  # HOST:PORT others reach us at (default bind:port)
    # records
    fsync: str = "always"  # primary: when a write is answered (always: once durable)
    retention_bytes: int = 1024 * MIB  # the floor: kept whatever the followers need
    retention_max_bytes: int = 0  # the hard cap (0: 4 x retention_bytes)
    segment_bytes: int = 0  # 0: derived from retention_bytes
    max_waiting_writes: int = 100_000  # primary: writes parked until replicas apply them
    sync_replicas: int = 0  # primary: every write waits for this many followers
    sync_timeout_ms: int = 1000  # ... this long, unless the write gives its own timeout
    sync_refuse: bool = False  # ... and is refused while fewer followers are connected
    # following (a replica)
    heartbeat_interval_ms: int = 300
    lazy_sync_ms: int = 10  # a follower no write waits for: fdatasync and ack this often
    compression: str = "auto"  # zstd | none | auto: zstd unless the upstream is on loopback
    primary_timeout_ms: int = 3000
    request_timeout_ms: int = 3000
    backoff_max_ms: int = 5000
    allow_bootstrap: bool = True
    allow_unrelated_history: bool = False  # --reinit
    bootstrap_chunk_bytes: int = 256 * 1024
    # serving
    beacon_interval_ms: int = 200
    stale_after_ms: int = 1500
    forget_after_ms: int = 3_600_000  # a follower silent this long leaves the list by itself
    checkpoint_interval_ms: int = 1000
    pub_hwm: int = 256  # per subscriber: 256 x 256 KiB stream records = 64 MiB at most
    limits: WireLimits = DEFAULT_LIMITS
    keys_dir: Path | None = None  # CURVE: DIR/<key_name>.key_secret + DIR/authorized_keys
    key_name: str = ""  # default: "primary" for a primary, the node id for a replica
    upstream_key: Path | None = None  # the upstream's public key (default DIR/primary.key)
    drain_max: int = 4096
    bootstrap_chunks_per_turn: int = 4

    @property
    def is_primary(self) -> bool:
        return not self.upstream

    @property
    def own_key_name(self) -> str:
        return self.key_name or ("primary" if self.is_primary else self.node_id)

    @property
    def retention_max(self) -> int:
        return self.retention_max_bytes or 4 * self.retention_bytes

    @property
    def segment_size(self) -> int:
        """Segments small enough that retention by whole segments keeps about N bytes."""
        if self.segment_bytes:
            return self.segment_bytes
        return max(64 * 1024, min(64 * MIB, self.retention_bytes // 8))
