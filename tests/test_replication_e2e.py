"""Replication end to end: real node processes, real ZeroMQ over TCP loopback, real LMDB."""

from __future__ import annotations

import json
import threading
from typing import Any

from kevo_repl.adapters.state_snapshot import digest_items
from kevo_repl.client import Client, Digest, NodeUnreachableError, batch_request
from kevo_repl.wire import pb
from tests.faults.checkers import count_events
from tests.nodes import Cluster, Node, converged, replica_view, wait_for

HOT_KEYS = 16  # every third write of ``write_batches`` overwrites one of these


def batch_items(
    batches: int, size: int, *, prefix: str = "k", value_bytes: int = 32
) -> list[list[tuple[bytes, bytes]]]:
    """What ``write_batches`` writes: write n (= batch * size + i) carries n in its value.

    Every third write (n % 3 == 2) overwrites one of ``HOT_KEYS`` hot keys in turn, the others
    get a key of their own (``{prefix}{batch:05d}-{i:04d}``), so batches applied out of order,
    twice or partly leave other values than the primary's: digests and read-backs differ.
    """
    pad = b"v" * max(0, value_bytes - 12)
    out = []
    for b in range(batches):
        items = []
        for i in range(size):
            n = b * size + i
            if n % 3 == 2:
                key = f"{prefix}hot-{(n // 3) % HOT_KEYS:02d}"
            else:
                key = f"{prefix}{b:05d}-{i:04d}"
            items.append((key.encode(), b"%012d" % n + pad))
        out.append(items)
    return out


def model_of(batches: list[list[tuple[bytes, bytes]]]) -> dict[bytes, bytes]:
    """The state after applying ``batches`` in order (a later write to a key wins)."""
    state: dict[bytes, bytes] = {}
    for items in batches:
        state.update(items)
    return state


def model_digest(state: dict[bytes, bytes], lsn: int) -> Digest:
    return Digest(lsn, len(state), digest_items(sorted(state.items())))


def write_batches(
    node: Node, batches: int, size: int, *, prefix: str = "k", value_bytes: int = 32
) -> int:
    """Pipelined batch writes of ``batch_items``; returns the last committed LSN."""
    reqs = [
        batch_request(items)
        for items in batch_items(batches, size, prefix=prefix, value_bytes=value_bytes)
    ]
    with node.client(10_000) as c:
        responses = c.call_many(reqs, window=32)
    for r in responses:
        assert r.WhichOneof("body") == "write", r
    lsns = [r.write.lsn for r in responses]
    # one DEALER, so the primary took them in order: batch k's LSNs right after batch k-1's
    assert lsns == [lsns[0] + k * size for k in range(batches)], lsns[:5]
    return lsns[-1]


def test_three_replicas_converge_after_50k_writes(cluster: Cluster) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica(f"r{i}", primary) for i in range(3)]
    last = write_batches(primary, batches=100, size=500)
    assert last == 50_000
    digest = wait_for("all replicas digest-equal", lambda: converged(primary, *replicas), 60)
    # the state of the 100 batches applied in order, hot keys holding their last writes
    assert digest == model_digest(model_of(batch_items(100, 500)), 50_000)
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
                    items = [(f"w{i:06d}-{j}".encode(), b"x" * 50) for j in range(19)]
                    items.append((b"hot-%d" % (i % 8), b"%d" % i))  # order changes the state
                    c.batch(items)
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    def applied(node: Node) -> int:
        node.assert_alive()
        with node.client(1000) as c:
            return c.status_message().lsn  # a replica's own Status: its applied LSN

    def registrations() -> list[dict[str, Any]]:
        """The replica's ``registered`` events, from its JSON log (kept across restarts)."""
        docs = []
        for line in replica.log_path.read_text(errors="replace").splitlines():
            if '"registered"' in line:
                doc = json.loads(line)
                if doc.get("event") == "registered":
                    docs.append(doc)
        return docs

    def catchups() -> int:
        view = replica_view(primary, "r0")
        assert view is not None
        value = view["catchups"]
        assert isinstance(value, int)
        return value

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for("replica applied some", lambda: applied(replica) > 2000)
        had = applied(replica)  # it applied at least this much before it died
        catchups_before = catchups()
        registered_before = len(registrations())
        replica.kill()
        committed_at_kill = applied(primary)
        wait_for(
            "2000 more writes while it is down",
            lambda: applied(primary) > committed_at_kill + 2000,
        )
        cluster.restart(replica)
        # It resumed from its own store: it registered with at least what it had applied.
        resumed = wait_for(
            "replica registers again",
            lambda: registrations()[registered_before:],
        )[0]
        assert int(resumed["applied_lsn"]) >= had, (resumed, had)
        # ...and catches up past every write made while it was down, under load.
        target = applied(primary)
        assert target > committed_at_kill + 2000
        wait_for(f"replica applies LSN {target}", lambda: applied(replica) >= target, 60)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    wait_for("converged", lambda: converged(primary, replica), 60)
    view = replica_view(primary, "r0")
    assert view is not None and view["bootstraps"] == 0
    assert catchups() > catchups_before  # the downtime's writes came by WalSync
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_unreachable_node_fails_fast() -> None:
    with Client("127.0.0.1:1", timeout_ms=300) as c:
        try:
            c.status_message()
        except NodeUnreachableError as exc:
            assert "127.0.0.1:1" in str(exc)
        else:
            raise AssertionError("status on a dead address returned")
