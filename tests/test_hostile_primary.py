"""Hostile input at a real primary's ROUTER: caps, every request type, credit, duplicate ids.

Every case checks the same three things: the answer is a clear ``Error`` (or the peer is
dropped), the node keeps serving, and nothing stored changed (digest before == after).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.wire import pb
from tests.faults.raw import RawDealer
from tests.nodes import Cluster, Node, converged, replica_view, wait_for
from tests.test_replication_e2e import write_batches

MIB = 1024 * 1024


@pytest.fixture
def primary(cluster: Cluster) -> Iterator[Node]:
    node = cluster.primary()
    write_batches(node, batches=4, size=50)  # LSN 200: something to protect
    yield node


def serving_and_unchanged(node: Node, before: object) -> None:
    node.assert_alive()
    with node.client() as c:
        assert c.status_message().lsn == 200
        assert c.get(b"k00000-0000") is not None
    assert node.digest() == before


def raw_batch(**fields: object) -> bytes:
    return pb.WalBatch(**fields).SerializeToString()  # type: ignore[arg-type]


ENTRY = {"ops": [OP_PUT], "keys": [b"k"], "values": [b"v"]}
CASES: list[tuple[str, pb.Request, int]] = [
    ("wal_sync from 0", pb.Request(wal_sync=pb.WalSyncRequest(from_lsn=0)), pb.ERROR_BAD_REQUEST),
    (
        "wal_sync past the end",
        pb.Request(wal_sync=pb.WalSyncRequest(from_lsn=202)),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "wal_sync at 2**64-1",
        pb.Request(wal_sync=pb.WalSyncRequest(from_lsn=2**64 - 1, max_bytes=2**32 - 1)),
        pb.ERROR_BAD_REQUEST,
    ),
    ("heartbeat unregistered", pb.Request(heartbeat=pb.HeartbeatRequest(applied_lsn=7)), 5),
    ("ack unregistered", pb.Request(ack=pb.AckRequest(applied_lsn=10**12)), 5),
    ("bootstrap unregistered", pb.Request(bootstrap=pb.BootstrapRequest(credit=5)), 5),
    (
        "credit for an unknown session",
        pb.Request(bootstrap=pb.BootstrapRequest(session_id=424242, credit=2**32 - 1)),
        pb.ERROR_CREDIT,
    ),
    ("register without id", pb.Request(register=pb.RegisterRequest()), pb.ERROR_BAD_REQUEST),
    (
        "register with a 300-char id",
        pb.Request(register=pb.RegisterRequest(replica_id="x" * 300)),
        pb.ERROR_BAD_REQUEST,
    ),
    ("put empty key", pb.Request(put=pb.PutRequest(key=b"", value=b"v")), pb.ERROR_BAD_REQUEST),
    (
        "put oversized key",
        pb.Request(put=pb.PutRequest(key=b"k" * (64 * 1024 + 1), value=b"v")),
        pb.ERROR_TOO_LARGE,
    ),
    (
        "put oversized value",
        pb.Request(put=pb.PutRequest(key=b"k", value=b"v" * (4 * MIB + 1))),
        pb.ERROR_TOO_LARGE,
    ),
    ("delete empty key", pb.Request(delete=pb.DeleteRequest(key=b"")), pb.ERROR_BAD_REQUEST),
    (
        "batch of garbage",
        pb.Request(batch=pb.BatchRequest(batch=b"\xff\xff\xff")),
        pb.ERROR_BAD_REQUEST,
    ),
    ("empty batch", pb.Request(batch=pb.BatchRequest(batch=b"")), pb.ERROR_BAD_REQUEST),
    (
        "batch with an unknown op",
        pb.Request(batch=pb.BatchRequest(batch=raw_batch(ops=[7], keys=[b"k"], values=[b"v"]))),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "ragged batch",
        pb.Request(batch=pb.BatchRequest(batch=raw_batch(ops=[OP_PUT, OP_PUT], keys=[b"k"]))),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "batch setting history_id",
        pb.Request(batch=pb.BatchRequest(batch=raw_batch(**ENTRY, history_id=b"h" * 16))),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "delete carrying a value",
        pb.Request(
            batch=pb.BatchRequest(batch=raw_batch(ops=[OP_DELETE], keys=[b"k"], values=[b"v"]))
        ),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "batch with unknown fields",
        pb.Request(batch=pb.BatchRequest(batch=raw_batch(**ENTRY) + b"\xa0\x06\x01")),
        pb.ERROR_BAD_REQUEST,
    ),
    (
        "batch over the entry cap",
        pb.Request(
            batch=pb.BatchRequest(
                batch=raw_batch(ops=[OP_PUT] * 65537, keys=[b"k"] * 65537, values=[b""] * 65537)
            )
        ),
        pb.ERROR_TOO_LARGE,
    ),
    ("get empty key", pb.Request(get=pb.GetRequest(key=b"")), pb.ERROR_BAD_REQUEST),
    (
        "get waiting for an LSN that never comes",
        pb.Request(get=pb.GetRequest(key=b"k", min_lsn=2**63, timeout_ms=50)),
        pb.ERROR_TIMEOUT,
    ),
]


def test_every_request_type_is_validated(primary: Node) -> None:
    before = primary.digest()
    with RawDealer(primary.address) as d:
        for i, (name, req, code) in enumerate(CASES, start=100):
            req.request_id = i
            resp = d.call(req)
            assert resp.WhichOneof("body") == "error", (name, resp)
            assert resp.error.code == code, (name, resp.error)
            assert resp.error.message, name
        # Unparseable, or no body this node knows (a newer peer): answered with request id 0
        # (the envelope is refused whole) and a message that says why.
        for frame, why in [(b"\xff\xff\xff\xff", "protobuf"), (b"\x08\x07\xa2\x06\x00", "no body")]:
            d.send(frame)
            got = d.recv()
            assert got is not None and got.request_id == 0
            assert got.error.code == pb.ERROR_BAD_REQUEST and why in got.error.message
    serving_and_unchanged(primary, before)


def test_oversized_frame_drops_the_peer(primary: Node) -> None:
    before = primary.digest()
    with RawDealer(primary.address) as d:
        d.send(b"\x00" * (16 * MIB + 1))  # over MAXMSGSIZE: libzmq cuts the connection
        assert d.recv(1000) is None
    serving_and_unchanged(primary, before)


def test_multi_frame_messages_get_no_answer(primary: Node) -> None:
    before = primary.digest()
    status = pb.Request(request_id=1, status=pb.StatusRequest()).SerializeToString()
    with RawDealer(primary.address) as d:
        d.send(status, status)
        d.send(*([b"x"] * 1000))
        d.send(status, b"\x00" * MIB, b"\x00" * MIB)
        d.send(b"", status)  # an empty delimiter frame (REQ-style) is not our protocol
        assert d.recv(500) is None
        assert d.call(pb.Request(request_id=2, status=pb.StatusRequest())).status.lsn == 200
    serving_and_unchanged(primary, before)


def test_bootstrap_credit_is_capped(primary: Node) -> None:
    write_batches(primary, batches=30, size=50, prefix="big", value_bytes=400)  # ~100 chunks
    before = primary.digest()
    with RawDealer(primary.address) as d:
        reg = d.call(pb.Request(request_id=1, register=pb.RegisterRequest(replica_id="greedy")))
        assert reg.register.primary_lsn == before.lsn
        greedy = pb.BootstrapRequest(credit=2**32 - 1, chunk_bytes=1)  # 1 B: clamped to 4 KiB
        d.request(pb.Request(request_id=2, bootstrap=greedy))
        first = d.recv()
        assert first is not None and first.WhichOneof("body") == "bootstrap", first
        session = first.bootstrap.session_id
        # Another peer can neither grant credit to this session nor read it.
        with RawDealer(primary.address) as thief:
            grant = pb.BootstrapRequest(session_id=session, credit=10)
            resp = thief.call(pb.Request(request_id=3, bootstrap=grant))
            assert resp.error.code == pb.ERROR_CREDIT
        chunks = [first]
        while (more := d.recv(500)) is not None:
            chunks.append(more)
        assert len(chunks) == 64, len(chunks)  # MAX_CREDIT, whatever was asked
        assert not chunks[-1].bootstrap.is_last
        assert [c.bootstrap.seq for c in chunks] == list(range(64))
        with primary.client() as c:
            c.put(b"during", b"bootstrap")  # the write path is not starved meanwhile
            c.delete(b"during")
    after = primary.digest()
    assert (after.keys, after.digest) == (before.keys, before.digest)


def test_duplicate_replica_id_is_refused_and_the_real_one_keeps_following(
    cluster: Cluster, primary: Node
) -> None:
    r0 = cluster.replica("r0", primary)
    wait_for("r0 converged", lambda: converged(primary, r0))
    before = primary.digest()
    with RawDealer(primary.address) as d:
        fake = pb.RegisterRequest(replica_id="r0", address="10.9.9.9:1", applied_lsn=10**6)
        resp = d.call(pb.Request(request_id=1, register=fake))
        assert resp.error.code == pb.ERROR_DUPLICATE_REPLICA, resp
        assert "r0" in resp.error.message
    view = replica_view(primary, "r0")
    assert view is not None and view["address"] == r0.address
    serving_and_unchanged(primary, before)
    write_batches(primary, batches=1, size=10, prefix="after")
    wait_for("r0 still follows", lambda: converged(primary, r0))


@pytest.mark.xfail(
    strict=True,
    reason="libzmq buffers a whole multipart message before the node can refuse it: "
    "MAXMSGSIZE caps each frame, nothing caps frames x size (see docs/faults.md)",
)
def test_total_message_size_is_capped_before_buffering(primary: Node) -> None:
    assert primary.proc is not None
    before = _peak_rss_kib(primary.proc.pid)
    with RawDealer(primary.address) as d:
        d.send(*([b"\x00" * (15 * MIB)] * 10))  # 150 MiB in frames under MAXMSGSIZE each
        # Same connection, so once this is answered the big message was read and dropped.
        assert d.call(pb.Request(request_id=1, status=pb.StatusRequest()), 30_000).status
    assert _peak_rss_kib(primary.proc.pid) - before < 64 * 1024


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def test_idle_bootstrap_sessions_cannot_starve_snapshots(primary: Node) -> None:
    write_batches(primary, batches=10, size=50, prefix="big", value_bytes=400)
    dealers = [RawDealer(primary.address) for _ in range(70)]
    try:
        for i, d in enumerate(dealers):
            d.call(pb.Request(request_id=1, register=pb.RegisterRequest(replica_id=f"idle{i}")))
            idle = pb.BootstrapRequest(credit=1, chunk_bytes=4096)  # many chunks: never done
            d.request(pb.Request(request_id=2, bootstrap=idle))
        wait_for("sessions opened", lambda: sum(1 for d in dealers if d.recv(10)) >= 60)
        with primary.client() as c:
            c.digest()  # ERROR_UNAVAILABLE "64 snapshots already open" today
    finally:
        for d in dealers:
            d.close()
