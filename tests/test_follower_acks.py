"""A follower syncs and acks every drain while its upstream says writes wait for acks
(``Beacon.writes_waiting``), and only every ``--lazy-sync-ms`` otherwise: a real replica
process against a fake primary that counts the acks it receives for the same record stream."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from kevo_repl.adapters.zmq_io import SocketOptions, connect_socket
from kevo_repl.client import Client
from kevo_repl.core.record import decode_record
from kevo_repl.wire import pb
from kevo_repl.wire.envelope import (
    TOPIC_WAL,
    decode_beacon,
    encode_beacon,
    encode_wal_frame,
    split_stream_frame,
)
from tests.faults.hostile_primary import HostilePrimary, make_record
from tests.nodes import Cluster, Node, wait_for

RECORDS = 40  # per burst, one at a time: each its own drain on the replica
LAZY_MS = 400


def _burst(fake: HostilePrimary, first: int, waiting: bool) -> int:
    """Announce ``waiting``, publish RECORDS one-entry records from ``first``; acks seen."""
    before = fake.requests_seen.get("ack", 0)
    now_us = int(time.monotonic() * 1e6)
    fake.publish([encode_beacon(fake.history, first - 1, now_us, 1, waiting)])
    for lsn in range(first, first + RECORDS):
        record = make_record(lsn, [b"ack:%d" % lsn], [b"v%d" % lsn], fake.history)
        fake.publish([encode_wal_frame(record)])
        time.sleep(0.01)  # pacing of the load, not a wait for a condition
    return fake.requests_seen.get("ack", 0) - before


def _durable(replica: Node) -> int:
    with replica.client(1000) as c:
        status = c.status_message()
    return status.durable_lsn if status.status == pb.STATUS_READY else -1


def test_acks_follow_each_drain_only_while_writes_wait(cluster: Cluster, tmp_path: Path) -> None:
    with HostilePrimary(tmp_path / "fake", records=1, beacons=False) as fake:
        replica = cluster.replica("r0", fake.address, "--lazy-sync-ms", str(LAZY_MS))
        wait_for("replica joins", lambda: replica.digest() == fake.expected_digest)
        first = fake.last_lsn + 1
        lazy = _burst(fake, first, waiting=False)
        end = first + RECORDS - 1
        wait_for("the lazy sync makes the burst durable", lambda: _durable(replica) == end)
        eager = _burst(fake, end + 1, waiting=True)
        end += RECORDS
        wait_for("every record durable", lambda: _durable(replica) == end)
        # 400 ms of records: lazily one ack per 400 ms (and one for the first record);
        # eagerly one per fdatasync, each covering the record or two received meanwhile.
        assert lazy <= 3, f"{lazy} acks for {RECORDS} records while no write waits"
        assert eager >= RECORDS // 2, f"only {eager} acks for {RECORDS} while writes wait"
        replica.assert_alive()


def test_a_primary_says_at_once_when_writes_wait_and_when_they_stopped(cluster: Cluster) -> None:
    """The rising edge comes before the waiting write's record on the stream; the falling
    edge once no write has waited for a while (WAIT_HOLD_MS)."""
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    host, port = primary.address.rsplit(":", 1)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = connect_socket(ctx, zmq.SUB, host, int(port), SocketOptions())
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        wait_for("the stream reaches us", lambda: sub.poll(100, zmq.POLLIN) or None)
        with Client(primary.address) as c:
            c.put(b"plain", b"1")
            lsn = c.put(b"waits", b"2", wait_replicas=1, timeout_ms=5000).lsn
        seen: list[tuple[str, bool | int]] = []  # ("beacon", waiting) / ("record", last LSN)

        def falling_edge() -> bool | None:
            while sub.poll(50, zmq.POLLIN):
                topic, rest = split_stream_frame(sub.recv())
                if topic == TOPIC_WAL:
                    seen.append(("record", decode_record(bytes(rest)).last_lsn))
                else:
                    seen.append(("beacon", decode_beacon(rest).writes_waiting))
            return ("beacon", False) in seen[seen.index(("beacon", True)) :] or None

        wait_for("a beacon says writes stopped waiting", falling_edge, timeout_s=10)
        assert seen.index(("beacon", True)) < seen.index(("record", lsn))
        assert ("beacon", True) not in seen[: seen.index(("record", lsn - 1)) + 1]
    finally:
        sub.close(0)
        ctx.term()
    replica.assert_alive()
