"""No fsync mode lets a replica hold what a power loss takes from the primary's WAL.

Before: with ``--fsync interval`` (or ``none``) records were published as soon as written;
an OS crash cut the WAL's unsynced tail while the history stayed the same, the restarted
primary reused those LSNs for other writes, and a replica that had applied the lost tail
caught up on top of it: silent divergence. Now every mode publishes a record only once it
is durable; ``interval`` only answers the client earlier.

The power loss is simulated exactly: the primary writes a line after every fdatasync
(``KEVO_WAL_SYNC_LOG``), is SIGKILLed under load, and its WAL is cut at the last synced
offset, which is what the disk would hold had the power gone at that moment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kevo_repl.node.local_state import SYNC_LOG_ENV
from tests.faults.checkers import count_events
from tests.faults.load import Writer
from tests.faults.power import cut_wal_at_last_sync
from tests.nodes import Cluster, Node, converged, wait_for
from tests.test_replication_e2e import write_batches


def applied(node: Node) -> int:
    with node.client() as c:
        return int(c.status_message().lsn)


@pytest.mark.parametrize("mode", ["interval", "none"])
def test_a_power_loss_never_leaves_a_replica_past_the_primary(
    cluster: Cluster, tmp_path: Path, mode: str
) -> None:
    sync_log = tmp_path / "syncs"
    primary = cluster.primary("primary", "--fsync", mode, env={SYNC_LOG_ENV: str(sync_log)})
    replicas = [cluster.replica(f"r{i}", primary) for i in range(2)]
    writers = [Writer(primary.address, prefix=f"w{i}", max_seconds=30) for i in range(3)]
    for w in writers:
        w.start()
    wait_for("load running", lambda: sum(len(w.acked) for w in writers) > 3000, 30)
    primary.kill()  # mid-load: groups written, some not yet synced
    for w in writers:
        w.stop()
    durable = cut_wal_at_last_sync(tmp_path / "primary" / "wal", sync_log)
    positions = {r.name: applied(r) for r in replicas}
    assert all(p <= durable for p in positions.values()), (positions, durable)
    cluster.restart(primary)
    assert applied(primary) == durable  # the cut WAL is what it recovered
    write_batches(primary, batches=5, size=50, prefix="after")
    wait_for("replicas converged", lambda: converged(primary, *replicas), 60)
    for r in replicas:
        assert count_events(r.log_path, "bootstrap_start") == 0
        assert count_events(r.log_path, "primary_refused") == 0
