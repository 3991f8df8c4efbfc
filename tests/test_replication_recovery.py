"""Bootstrap, primary crash and foreign histories, on real node processes."""

from __future__ import annotations

import threading

from kevo_repl.client import Client, NodeUnreachableError, RemoteError
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.nodes import Cluster, converged, replica_view, wait_for
from tests.test_replication_e2e import write_batches


def test_late_replica_bootstraps_once_with_rising_progress_while_writes_go_on(
    cluster: Cluster,
) -> None:
    primary = cluster.primary(
        "primary", "--retention-bytes", "2000000", "--segment-bytes", "250000"
    )
    write_batches(primary, batches=200, size=500, value_bytes=400)  # 100k writes, ~43 MB WAL

    def wal_passed_lsn_1() -> bool:
        with primary.client() as c:
            return c.status_message().retained_from_lsn > 1

    wait_for("retention to drop LSN 1", wal_passed_lsn_1)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with Client(primary.address) as c:
            i = 0
            while not stop.is_set() and i < 100_000:
                written.append(c.put(f"during-{i}".encode(), b"x" * 100).lsn)
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        replica = cluster.replica("late", primary, "--bootstrap-chunk-bytes", "16384")
        progress: list[float] = []

        def bootstrapped() -> bool:
            with replica.client() as rc:
                own = rc.status_message()  # the replica's own Status reports progress live
            if own.status == pb.STATUS_BOOTSTRAPPING:
                progress.append(own.bootstrap_progress)
            v = replica_view(primary, "late")
            return v is not None and v["status"] == pb.STATUS_READY

        wait_for("bootstrap done", bootstrapped, 60)
        before = len(written)
        wait_for("writes continue", lambda: len(written) > before + 10)
    finally:
        stop.set()
        t.join(30)
    wait_for("converged", lambda: converged(primary, replica), 60)
    view = replica_view(primary, "late")
    assert view is not None and view["bootstraps"] == 1
    rising = [p for p in progress if p > 0]
    assert len(set(rising)) >= 2 and rising == sorted(rising), progress
    assert written, "writes went on during the bootstrap"
    log = replica.log_path.read_text()
    for event in ("bootstrap_start", "bootstrap_progress", "bootstrap_done", "caught_up"):
        assert f'"{event}"' in log, event


def test_primary_sigkill_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--fsync", "always")
    replicas = [cluster.replica(f"r{i}", primary) for i in range(2)]
    acked: dict[bytes, bytes] = {}
    stop = threading.Event()

    def writer(wid: int) -> None:
        with Client(primary.address, timeout_ms=1000) as c:
            i = 0
            while not stop.is_set():
                key, value = f"w{wid}-{i}".encode(), f"value-{wid}-{i}".encode()
                try:
                    c.put(key, value)
                except (NodeUnreachableError, RemoteError):
                    return
                acked[key] = value
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for("load running", lambda: len(acked) > 3000)
        primary.kill()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    cluster.restart(primary)
    with primary.client() as c:
        missing = [k for k, v in acked.items() if c.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    wait_for(
        "replicas converge to the recovered primary", lambda: converged(primary, *replicas), 60
    )
    for r in replicas:
        view = replica_view(primary, r.name)
        assert view is not None and view["bootstraps"] == 0


def test_replica_of_another_history_refuses_until_reinit(cluster: Cluster) -> None:
    """Regression: a primary restarted on an empty --data made every replica bootstrap from
    it at info level, dropping 160k keys to 0: the only good copies were wiped."""
    a = cluster.primary("primary-a")
    write_batches(a, batches=2, size=100, prefix="a")
    r = cluster.replica("r0", a)
    wait_for("r0 follows a", lambda: converged(a, r))
    r.stop()
    b = cluster.primary("primary-b")
    write_batches(b, batches=3, size=100, prefix="b")
    a_digest = a.digest()

    def refused() -> str | None:
        with r.client() as c:
            s = c.status_message()
        return s.error_message if s.status == pb.STATUS_ERROR else None

    # Default (and with --no-bootstrap): ERROR saying what to do, its data untouched, served.
    r.argv[r.argv.index("--primary") + 1] = b.address
    for extra in ([], ["--no-bootstrap"]):
        r.argv += extra
        cluster.restart(r)
        message = wait_for("r0 refuses b", refused)
        assert "unrelated to ours" in message and "--reinit" in message, message
        # It stays up (docs/errors.md): not ready, saying why, to a probe and to a person.
        ready = kevo("status", "--node", r.address, "--ready")
        assert ready.returncode == 1 and "not ready: " in ready.stderr, ready.stderr
        assert "unrelated to ours" in ready.stderr and r.proc is not None
        assert r.proc.poll() is None
        assert r.digest() == a_digest
        with r.client() as c:
            assert c.get(b"a00000-0000") is not None  # it keeps serving its data
        assert count_events(r.log_path, "bootstrap_start") == 0
        r.stop()
        for flag in extra:
            r.argv.remove(flag)

    # --reinit: one bootstrap from b, saying what it discards, never b applied on a's data.
    r.argv.append("--reinit")
    cluster.restart(r)
    wait_for("r0 follows b", lambda: converged(b, r), 60)
    view = replica_view(b, "r0")
    assert view is not None and view["bootstraps"] == 1
    assert count_events(r.log_path, "bootstrap_replaces_data") == 1
    with r.client() as c:
        assert c.get(b"a00000-0000") is None  # nothing of history a survives
