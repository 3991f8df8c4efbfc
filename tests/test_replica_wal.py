"""A replica's own WAL: it recovers from it alone, and who may change a node's role.

Before, a replica held only its store: a crash between receiving records and applying them
left it to fetch them again from its primary, and it could serve no follower of its own.
"""

from __future__ import annotations

from pathlib import Path

from kevo_repl.adapters.security import ClientCurve, write_keypair
from kevo_repl.client import Client, RemoteError
from kevo_repl.node.upstream_source import CRASH_AFTER_APPEND_ENV
from kevo_repl.wire import pb
from tests.faults.checkers import count_events
from tests.nodes import Cluster, converged, wait_for
from tests.test_replication_e2e import write_batches
from tests.test_security import _key, _start_secure


def test_a_replica_killed_between_its_wal_append_and_apply_recovers_from_its_wal(
    cluster: Cluster,
) -> None:
    primary = cluster.primary()
    write_batches(primary, batches=2, size=100)  # LSN 200
    crash_at = 1200
    replica = cluster.replica("r1", primary, env={CRASH_AFTER_APPEND_ENV: str(crash_at)})
    write_batches(primary, batches=20, size=100, prefix="more")  # up to LSN 2200
    assert replica.proc is not None
    assert replica.proc.wait(30) == 70  # died with records logged but not applied
    logged = primary.digest()
    assert primary.stop() == 0  # nothing to fetch from: only its own WAL can help now
    replica.env.clear()
    cluster.restart(replica)
    assert count_events(replica.log_path, "store_caught_up_from_wal") == 1
    with replica.client() as c:
        applied = c.status_message().lsn
    assert applied >= crash_at  # what was logged was applied from the log, upstream down
    cluster.restart(primary)
    wait_for("converged", lambda: converged(primary, replica), 30)
    assert primary.digest() == logged
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_role_changes_need_the_admin_role_and_upstreams_need_their_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    for name in ("primary", "r1", "r2", "app", "ops"):
        write_keypair(keys, name)
    lines = [
        f"{_key(keys, 'r1')} replica r1",
        f"{_key(keys, 'r2')} replica r2",
        f"{_key(keys, 'app')} client-rw",
        f"{_key(keys, 'ops')} admin",
    ]
    (keys / "authorized_keys").write_text("\n".join(lines) + "\n")
    primary = _start_secure(cluster, keys, "primary", "primary")
    r1 = _start_secure(cluster, keys, "r1", "replica", "--primary", primary.address, "--id", "r1")
    r1_curve = ClientCurve.from_dir(keys, "app", keys / "r1.key")
    with Client(r1.address, curve=r1_curve) as c:
        for req in (
            pb.Request(promote=pb.PromoteRequest(force=True)),
            pb.Request(repoint=pb.RepointRequest(upstream=primary.address)),
        ):
            try:
                c.call(req)
            except RemoteError as exc:
                assert exc.code == pb.ERROR_UNAUTHORIZED
            else:
                raise AssertionError(f"a client-rw key was allowed {req.WhichOneof('body')}")
    # r2 follows r1 (cascading): with primary.key as the upstream's key it cannot connect.
    r2 = cluster.replica("r2", r1, "--keys", str(keys), "--id", "r2", wait=False)
    r2_ops = ClientCurve.from_dir(keys, "ops", keys / "r2.key")

    def r2_status() -> int:
        with Client(r2.address, timeout_ms=500, curve=r2_ops) as c:
            return int(c.status_message().status)

    wait_for("r2 serving", r2_status, 30)
    wait_for(  # the handshake fails: its Register is never answered, and r2 says why
        "r2 gives up on r1", lambda: count_events(r2.log_path, "upstream_unreachable") >= 1, 30
    )
    assert '"cause": "wrong server key"' in r2.log_path.read_text()
    assert r2_status() != pb.STATUS_READY
    assert r2.stop() == 0
    r2.argv += ["--primary-key", str(keys / "r1.key")]
    r2.start()
    wait_for("r2 follows r1 with r1's key", lambda: r2_status() == pb.STATUS_READY, 30)
    ops = ClientCurve.from_dir(keys, "ops", keys / "r1.key")
    with Client(r1.address, curve=ops) as c:  # the admin key may
        assert c.call(pb.Request(promote=pb.PromoteRequest(force=True))).promote.fork_lsn == 0


def test_a_rewound_store_stays_unserved_across_a_restart_until_it_passes_its_point(
    cluster: Cluster,
) -> None:
    """A rewind writes the tail's keys at the upstream's LSN S and the applied LSN back to
    the fork: a mixed state until replayed past S. The point is saved before the store
    write, so a node killed in between does not serve that state after its restart (found
    by the failover simulation, seed 208: the point lived only in memory)."""
    primary = cluster.primary()
    write_batches(primary, batches=2, size=100)  # LSN 200
    replica = cluster.replica("r1", primary)
    wait_for("caught up", lambda: converged(primary, replica), 30)
    assert replica.stop() == 0
    (cluster.root / "r1" / "CONSISTENT_AT").write_text("1000\n")  # as a rewind leaves it
    cluster.restart(replica)
    with replica.client() as c:
        try:
            c.get(b"k00000-0000")
            raise AssertionError("a store short of its rewind's point served a read")
        except RemoteError as exc:
            assert "once consistent" in str(exc)
    write_batches(primary, batches=9, size=100, prefix="more")  # LSN 1100: past the point
    wait_for("converged", lambda: converged(primary, replica), 30)
    with replica.client() as c:
        assert c.get(b"more00000-0000") is not None  # served again
