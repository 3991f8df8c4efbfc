"""Replication end to end: real node processes, real ZeroMQ over TCP loopback, real LMDB."""

from __future__ import annotations

import threading

from kevo_repl.client import Client, NodeUnreachableError, batch_request
from kevo_repl.wire import pb
from tests.nodes import Cluster, Node, converged, replica_view, wait_for


def write_batches(
    node: Node, batches: int, size: int, *, prefix: str = "k", value_bytes: int = 32
) -> int:
    """Pipelined batch writes; returns the last committed LSN."""
    pad = b"v" * max(0, value_bytes - 12)
    reqs = [
        batch_request(
            [
                (f"{prefix}{b:05d}-{i:04d}".encode(), b"%012d" % (b * size + i) + pad)
                for i in range(size)
            ]
        )
        for b in range(batches)
    ]
    with node.client(10_000) as c:
        responses = c.call_many(reqs, window=32)
    for r in responses:
        assert r.WhichOneof("body") == "write", r
    return max(r.write.lsn for r in responses)


def test_three_replicas_converge_after_50k_writes(cluster: Cluster) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica(f"r{i}", primary) for i in range(3)]
    last = write_batches(primary, batches=100, size=500)
    assert last == 50_000
    digest = wait_for("all replicas digest-equal", lambda: converged(primary, *replicas), 60)
    assert digest.lsn == 50_000 and digest.keys == 50_000
    for r in replicas:
        view = replica_view(primary, r.name)
        assert view is not None and view["bootstraps"] == 0


def test_tiny_pub_hwm_drops_but_walsync_repairs_without_bootstrap(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--pub-hwm", "1", "--fsync", "none")
    replica = cluster.replica("r0", primary)
    # Many small pipelined writes: each group commit is one publish, and a PUB pipe of one
    # message drops whatever the I/O thread has not flushed yet.
    for round_ in range(4):
        write_batches(primary, batches=1500, size=4, prefix=f"r{round_}-", value_bytes=200)
    wait_for("replica converges", lambda: converged(primary, replica), 60)
    view = replica_view(primary, "r0")
    assert view is not None
    assert view["bootstraps"] == 0
    # The stream really dropped batches and WalSync repaired them (beyond the join's own).
    assert int(view["catchups"]) > 1, view  # type: ignore[call-overload]


def test_status_lists_replicas_and_marks_a_stopped_one_disconnected(cluster: Cluster) -> None:
    primary = cluster.primary()
    r0 = cluster.replica("r0", primary)
    r1 = cluster.replica("r1", primary)
    write_batches(primary, batches=5, size=100)
    wait_for("converged", lambda: converged(primary, r0, r1))

    def both_ready() -> bool:
        views = [replica_view(primary, n) for n in ("r0", "r1")]
        return all(v is not None and v["status"] == pb.STATUS_READY for v in views)

    wait_for("both ready", both_ready)
    view = replica_view(primary, "r0")
    assert view is not None
    assert view["role"] == pb.ROLE_REPLICA
    assert view["applied_lsn"] == 500 and view["lag_entries"] == 0
    assert view["address"] == r0.address
    r1.stop()

    def r1_disconnected() -> bool:
        v = replica_view(primary, "r1")
        return v is not None and v["status"] == pb.STATUS_DISCONNECTED

    wait_for("r1 disconnected", r1_disconnected, timeout_s=5)  # stale after 1.5 s
    assert replica_view(primary, "r0")["status"] == pb.STATUS_READY  # type: ignore[index]


def test_wait_for_replicas(cluster: Cluster) -> None:
    primary = cluster.primary()
    r0 = cluster.replica("r0", primary)
    r1 = cluster.replica("r1", primary)
    write_batches(primary, batches=1, size=10)
    wait_for("converged", lambda: converged(primary, r0, r1))
    with primary.client() as c:
        ok = c.put(b"wait-key", b"v1", wait_replicas=2, timeout_ms=5000)
        assert not ok.wait_timed_out and ok.replicas_applied == 2
        for r in (r0, r1):
            with r.client() as rc:
                assert rc.get(b"wait-key") == b"v1"  # applied means readable there
        r1.signal(19)  # SIGSTOP: alive but silent
        try:
            wait_for(
                "r1 stale",
                lambda: replica_view(primary, "r1")["status"] == pb.STATUS_DISCONNECTED,  # type: ignore[index]
                timeout_s=5,
            )
            late = c.put(b"wait-key", b"v2", wait_replicas=2, timeout_ms=400)
            assert late.wait_timed_out and late.replicas_applied == 1
            assert late.lsn == ok.lsn + 1
        finally:
            r1.signal(18)  # SIGCONT


def test_killed_replica_resumes_without_bootstrap(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r0", primary)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with Client(primary.address) as c:
                i = 0
                while not stop.is_set() and i < 20_000:
                    c.batch([(f"w{i:06d}-{j}".encode(), b"x" * 50) for j in range(20)])
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for("replica applied some", lambda: replica.digest().lsn > 2000)
        replica.kill()
        wait_for(
            "more writes while it is down",
            lambda: primary.digest().lsn > replica_lsn_floor(primary) + 2000,
        )
        cluster.restart(replica)
        wait_for("replica catching up", lambda: replica.digest().lsn > 0)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    wait_for("converged", lambda: converged(primary, replica), 60)
    view = replica_view(primary, "r0")
    assert view is not None and view["bootstraps"] == 0


def replica_lsn_floor(primary: Node) -> int:
    v = replica_view(primary, "r0")
    return int(v["applied_lsn"]) if v else 0  # type: ignore[call-overload]


def test_unreachable_node_fails_fast() -> None:
    with Client("127.0.0.1:1", timeout_ms=300) as c:
        try:
            c.status()
        except NodeUnreachableError as exc:
            assert "127.0.0.1:1" in str(exc)
        else:
            raise AssertionError("status on a dead address returned")
