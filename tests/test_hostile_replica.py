"""A real replica process against a hostile fake primary: forged records, bad replies.

The fake primary (``tests/faults/hostile_primary.py``) first serves an honest history so the
replica reaches a known digest, then lies. The replica may refuse, disconnect or register
again; it must never apply a forged record, never crash, and keep serving its readers.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import cast

import pytest

from kevo_repl.wire import pb
from kevo_repl.wire.envelope import encode_beacon, encode_wal_frame
from tests.faults.checkers import count_events
from tests.faults.hostile_primary import HostilePrimary, make_record
from tests.faults.mutate import END_MARKER, MARKER_LOG, forged_records
from tests.nodes import Cluster, Node, wait_for


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[HostilePrimary]:
    with HostilePrimary(tmp_path / "fake") as hp:
        yield hp


def joined(cluster: Cluster, fake: HostilePrimary, name: str = "r0") -> Node:
    replica = cluster.replica(name, fake.address)
    wait_for("replica joins the honest history", lambda: replica.digest() == fake.expected_digest)
    return replica


def markers(replica: Node) -> int:
    return replica.log_path.read_text(errors="replace").count(MARKER_LOG)


def wait_consumed(replica: Node, fake: HostilePrimary, timeout_s: float = 30.0) -> None:
    """Publish the end marker and wait until the replica logged it (stream consumed)."""
    seen = markers(replica)
    fake.publish([END_MARKER])
    wait_for("replica consumed the stream", lambda: markers(replica) > seen, timeout_s)


def wait_ready(replica: Node) -> None:
    def ready() -> bool:
        replica.assert_alive()
        with replica.client(1000) as c:
            return c.status_message().status == pb.STATUS_READY

    wait_for(f"{replica.name} ready", ready)


# An unsolicited Error the replica only logs (``primary_error`` with its message): sent to
# the replica's DEALER after other frames, its log line proves those were read first.
_MARKER_RID = 1 << 62  # never a request id of the replica's own
_dealer_markers = itertools.count()


def wait_replies_consumed(replica: Node, fake: HostilePrimary, timeout_s: float = 30.0) -> None:
    """Send a marker after what went to the replica's DEALER; wait until it was logged.

    Sent again while not seen: a replica that reconnected has a new DEALER (and whatever
    went to the old one was dropped with it, unread, which is fine too).
    """
    text = f"dealer-marker-{next(_dealer_markers)}"
    frame = pb.Response(
        request_id=_MARKER_RID, error=pb.Error(code=pb.ERROR_UNAVAILABLE, message=text)
    ).SerializeToString()
    sent_at = [0.0]

    def seen() -> bool:
        replica.assert_alive()
        if text in replica.log_path.read_text(errors="replace"):
            return True
        if time.monotonic() - sent_at[0] > 0.5:
            sent_at[0] = time.monotonic()
            fake.send_to_replica([frame])
        return False

    wait_for("replica read its DEALER up to the marker", seen, timeout_s)


def assert_nothing_forged(replica: Node, fake: HostilePrimary, what: str) -> None:
    """Right now (no waiting): the honest digest, and no bootstrap ever began."""
    replica.assert_alive()
    got = replica.digest()
    assert got == fake.expected_digest, f"after {what}: {got} != {fake.expected_digest}"
    boots = count_events(replica.log_path, "bootstrap_start")
    assert boots == 0, f"after {what}: {boots} bootstraps began"


def assert_unharmed(replica: Node, fake: HostilePrimary) -> None:
    replica.assert_alive()
    assert fake.expected_digest is not None
    wait_for(
        "replica back at the honest digest, serving",
        lambda: replica.digest() == fake.expected_digest,
    )
    with replica.client() as c:
        assert c.get(b"key-0001") == fake.data[b"key-0001"]
        assert c.get(b"forged-key") is None


def test_forged_stream_records_are_never_applied(cluster: Cluster, fake: HostilePrimary) -> None:
    replica = joined(cluster, fake)
    rng = random.Random(5)
    forged = forged_records(fake.history, fake.last_lsn, rng)
    bad_crc = bytearray(make_record(fake.last_lsn + 1, [b"forged-key"], [b"v"], fake.history))
    bad_crc[-1] ^= 0x01
    frames = [encode_wal_frame(r) for r in [*forged, bytes(bad_crc)]]
    frames.append(encode_beacon(rng.randbytes(16), 10**9, 1))  # a beacon of another history
    for n, frame in enumerate(frames):  # one at a time: each must meet a following replica
        wait_ready(replica)
        fake.publish([frame])
        wait_consumed(replica, fake)
        assert_nothing_forged(replica, fake, f"forged frame {n}")
    assert_unharmed(replica, fake)
    assert count_events(replica.log_path, "bad_stream_frame") >= 3
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_forged_walsync_replies_are_never_applied(cluster: Cluster, fake: HostilePrimary) -> None:
    replica = joined(cluster, fake)
    rng = random.Random(6)
    forged = forged_records(fake.history, fake.last_lsn, rng)
    served: list[int] = []  # how many forged replies went out
    allowed = [0]  # how many may have gone out by now

    def lie(req: pb.Request, honest: list[bytes]) -> list[bytes]:
        if req.WhichOneof("body") != "wal_sync" or len(served) >= allowed[0]:
            return honest
        record = forged[len(served)]
        served.append(1)
        sync = pb.WalSyncResponse(records=[record], primary_lsn=fake.last_lsn + 10)
        return [pb.Response(request_id=req.request_id, wal_sync=sync).SerializeToString()]

    fake.responder = lie
    # A beacon claiming more than we have: the replica asks WalSync, and gets one lie.
    for n in range(len(forged)):
        allowed[0] = n + 1

        def lied(n: int = n) -> bool:
            replica.assert_alive()
            fake.publish([encode_beacon(fake.history, fake.last_lsn + 10, 1)])
            return len(served) > n

        wait_for(f"replica asked for and got forged reply {n}", lied)
        wait_replies_consumed(replica, fake)
        assert_nothing_forged(replica, fake, f"forged WalSync reply {n}")
    fake.responder = None
    assert_unharmed(replica, fake)
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_bootstrap_chunks_out_of_order_restart_the_bootstrap(
    cluster: Cluster, tmp_path: Path
) -> None:
    with HostilePrimary(tmp_path / "fake", bootstrap_required=True) as fake:
        lies = 2
        held: list[list[bytes]] = []  # each bootstrap's chunks, sent when the test says so

        def hold(req: pb.Request, honest: list[bytes]) -> list[bytes]:
            if req.WhichOneof("body") != "bootstrap" or len(honest) < 3:
                return honest  # not a session's start: a credit grant
            if len(held) < lies:
                held.append([honest[0], honest[2], honest[1], *honest[3:]])
            else:
                held.append(honest)
            return []

        fake.responder = hold
        replica = cluster.replica("r0", fake.address)
        empty = replica.digest()
        assert (empty.lsn, empty.keys) == (0, 0), empty

        def requested(n: int) -> bool:
            return len(held) > n

        def broken(n: int) -> bool:
            return count_events(replica.log_path, "bootstrap_broken") == n

        for n in range(lies):
            wait_for(f"bootstrap {n + 1} requested", partial(requested, n))
            assert count_events(replica.log_path, "bootstrap_start") == n + 1
            fake.send_to_replica(held[n])  # in time: the replica waits 2 s for an answer
            wait_for(f"out-of-order stream {n + 1} refused", partial(broken, n + 1))
            # Nothing of a broken stream reached the store: still the empty one.
            assert replica.digest() == empty, f"after broken bootstrap {n + 1}"
        wait_for("an honest bootstrap requested", partial(requested, lies))
        assert replica.digest() == empty
        fake.send_to_replica(held[lies])
        assert_unharmed(replica, fake)  # the honest stream installs the snapshot
        assert count_events(replica.log_path, "bootstrap_broken") == lies
        assert count_events(replica.log_path, "bootstrap_start") == lies + 1
        assert count_events(replica.log_path, "bootstrap_done") == 1


def test_garbage_and_error_replies_do_not_crash_the_replica(
    cluster: Cluster, fake: HostilePrimary
) -> None:
    replica = joined(cluster, fake)
    rng = random.Random(7)
    UNKNOWN_CODE = cast("pb.ErrorCode.ValueType", 999)
    junk = [
        b"",
        b"\x00",
        rng.randbytes(200),
        pb.Response(request_id=0).SerializeToString(),  # no body
        pb.Response(
            request_id=1, error=pb.Error(code=UNKNOWN_CODE, message="?")
        ).SerializeToString(),
        pb.Response(request_id=2, error=pb.Error(code=pb.ERROR_NOT_REGISTERED)).SerializeToString(),
        pb.Response(
            request_id=3, error=pb.Error(code=pb.ERROR_TOO_OLD, retained_from_lsn=10**12)
        ).SerializeToString(),
        pb.Response(
            request_id=4,
            bootstrap=pb.BootstrapChunk(session_id=9, seq=0, keys=[b"x"], is_last=True),
        ).SerializeToString(),
    ]
    for n, frame in enumerate(junk):
        fake.send_to_replica([frame])
        wait_replies_consumed(replica, fake)
        assert_nothing_forged(replica, fake, f"junk reply {n}")
    wait_for("garbage logged", lambda: count_events(replica.log_path, "bad_reply") >= 3)
    assert_unharmed(replica, fake)
    assert count_events(replica.log_path, "bootstrap_start") == 0
