"""Coalesced write replies on a real primary: a connection that asks for ``WriteReplies``
gets one frame for all its writes a group commits, each request id with its own LSNs; one
that does not ask gets one ``Response`` per write, as before."""

from __future__ import annotations

import zmq

from kevo_repl.adapters.zmq_io import SocketOptions, connect_socket
from kevo_repl.client import Client
from kevo_repl.wire import pb
from kevo_repl.wire.envelope import decode_response, split_write_replies
from tests.nodes import Cluster

WRITES = 400


def _blast(address: str, coalesce: bool) -> tuple[int, dict[int, tuple[int, int]]]:
    """Send WRITES puts back to back on one DEALER; (frames received, id -> LSNs)."""
    host, port = address.rsplit(":", 1)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = connect_socket(ctx, zmq.DEALER, host, int(port) + 1, SocketOptions())
    try:
        for i in range(1, WRITES + 1):
            put = pb.PutRequest(key=b"hot:%d" % (i % 7), value=b"%d" % i)
            req = pb.Request(request_id=i, coalesce_replies=coalesce, put=put)
            sock.send(req.SerializeToString())
        frames = 0
        lsns: dict[int, tuple[int, int]] = {}
        while len(lsns) < WRITES:
            assert sock.poll(10_000, zmq.POLLIN), f"{len(lsns)} of {WRITES} answered"
            resp = decode_response(sock.recv())
            frames += 1
            assert coalesce or resp.WhichOneof("body") == "write"
            for r in split_write_replies(resp):
                assert r.request_id not in lsns
                lsns[r.request_id] = (r.write.first_lsn, r.write.lsn)
        return frames, lsns
    finally:
        sock.close(0)
        ctx.term()


def test_a_connection_that_asks_gets_one_frame_per_group_with_every_lsn(cluster: Cluster) -> None:
    primary = cluster.primary()
    frames, lsns = _blast(primary.address, coalesce=True)
    assert frames < WRITES  # several writes of one group in a frame
    first = min(f for f, _ in lsns.values())
    # Each write its own LSN, in the order sent (one connection, one queue): a reordered,
    # doubled or misattributed answer breaks the sequence.
    assert [lsns[i] for i in range(1, WRITES + 1)] == [
        (first + i, first + i) for i in range(WRITES)
    ]
    with Client(primary.address) as c:
        for k in range(7):  # the last write to each hot key is what is stored
            last = max(i for i in range(1, WRITES + 1) if i % 7 == k)
            assert c.get_with_lsn(b"hot:%d" % k)[0] == b"%d" % last
    frames, lsns = _blast(primary.address, coalesce=False)
    assert frames == WRITES and len(lsns) == WRITES
