"""The primary's loop keeps turning: Digest off the loop, bounded waiters, believed-nothing acks.

Before: Digest scanned the store on the loop thread (three pipelined Digests froze writes and
beacons), writes waiting for replicas were unbounded, and a registered peer sending
``Ack(applied=10**15)`` satisfied ``put --wait-replicas 1`` at once and showed as READY.
"""

from __future__ import annotations

import time

from kevo_repl.client import batch_request
from kevo_repl.wire import pb
from tests.faults.checkers import count_events
from tests.faults.raw import RawDealer
from tests.nodes import Cluster, Node, replica_view, wait_for


def load_keys(node: Node, count: int) -> int:
    with node.client(30_000) as c:
        reqs = [
            batch_request([(b"key-%08d" % (b * 1000 + i), b"value") for i in range(1000)])
            for b in range(count // 1000)
        ]
        answers = c.call_many(reqs, window=16)
    return answers[-1].write.lsn


def test_pipelined_digests_do_not_stall_writes_or_followers(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    lsn = load_keys(primary, 400_000)
    wait_for("replica caught up", lambda: replica.digest().lsn == lsn, 60)
    with RawDealer(primary.address) as d1, RawDealer(primary.address) as d2:
        started = time.monotonic()
        for i, d in enumerate((d1, d2, d1, d2)):  # the second per connection is refused
            d.request(pb.Request(request_id=i + 1, digest=pb.DigestRequest()))
        slowest = 0.0
        with primary.client() as c:
            for i in range(40):  # writes go on while the digests run
                t = time.monotonic()
                c.put(b"during-%d" % i, b"x")
                slowest = max(slowest, time.monotonic() - t)
        answers = [d.recv(30_000) for d in (d1, d2) for _ in range(2)]
        elapsed = time.monotonic() - started
    digests = [a for a in answers if a is not None and a.WhichOneof("body") == "digest"]
    refused = [a for a in answers if a is not None and a.WhichOneof("body") == "error"]
    assert len(digests) == 2 and len(refused) == 2, answers
    assert all("already being computed" in a.error.message for a in refused)
    assert all(d.digest.keys >= 400_000 for d in digests)
    # Each digest of 400k keys takes about 0.4 s: on the loop, the writes waited for them.
    assert slowest < 0.3, f"a write waited {slowest:.3f} s while digests ran ({elapsed:.2f} s)"
    view = replica_view(primary, "r1")
    assert view is not None and view["status"] == pb.STATUS_READY
    assert count_events(replica.log_path, "disconnected") == 0


def test_writes_waiting_for_replicas_are_capped_with_a_clear_error(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--max-waiting-writes", "5")
    with primary.client(10_000) as c:
        waiting = [
            pb.Request(
                put=pb.PutRequest(key=b"w%d" % i, value=b"v", wait_replicas=1, timeout_ms=3000)
            )
            for i in range(8)
        ]
        answers = c.call_many(waiting, window=8)
    kinds = [a.WhichOneof("body") for a in answers]
    timed_out = [a for a in answers if kinds and a.WhichOneof("body") == "write"]
    refused = [a for a in answers if a.WhichOneof("body") == "error"]
    assert len(timed_out) == 5 and all(a.write.wait_timed_out for a in timed_out), kinds
    assert len(refused) == 3
    assert all(a.error.code == pb.ERROR_UNAVAILABLE for a in refused)
    assert all("wait for replicas" in a.error.message for a in refused)
    with primary.client() as c:
        assert c.status_message().lsn == 5  # the refused writes were not committed


def test_forged_acks_release_nothing_and_show_nothing(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        lsn = c.put(b"before", b"1").lsn
    with RawDealer(primary.address) as liar, RawDealer(primary.address) as writer:
        reg = pb.RegisterRequest(replica_id="liar", address="10.0.0.1:7110", applied_lsn=lsn)
        assert liar.call(pb.Request(request_id=1, register=reg)).register.primary_lsn == lsn
        put = pb.PutRequest(key=b"k", value=b"v", wait_replicas=1, timeout_ms=1500)
        writer.request(pb.Request(request_id=1, put=put))
        forged = [
            pb.Request(request_id=2, ack=pb.AckRequest(applied_lsn=10**15, durable_lsn=10**15)),
            pb.Request(request_id=3, ack=pb.AckRequest(applied_lsn=lsn, durable_lsn=lsn + 5)),
            pb.Request(
                request_id=4,
                heartbeat=pb.HeartbeatRequest(status=pb.STATUS_READY, applied_lsn=10**15),
            ),
        ]
        answers = []
        for f in forged:
            liar.request(f)
            answers.append(liar.recv(3000))
        written = writer.recv(5000)
    assert all(a is not None and a.error.code == pb.ERROR_BAD_REQUEST for a in answers), answers
    assert "past the primary's last LSN" in answers[0].error.message  # type: ignore[union-attr]
    assert "past the applied LSN" in answers[1].error.message  # type: ignore[union-attr]
    assert written is not None and written.WhichOneof("body") == "write", written
    assert written.write.wait_timed_out and written.write.replicas_applied == 0
    view = replica_view(primary, "liar")
    assert view is not None
    assert view["applied_lsn"] == lsn and view["status"] != pb.STATUS_READY
    wait_for("the refusal logged", lambda: count_events(primary.log_path, "impossible_position"))
