"""A real replica that follows compressed, against a fake primary sending bad zstd.

Damaged frames, bombs (small frames that inflate past the record limit) and garbage on
topic Z, in WalSync replies and in bootstrap chunks: each is refused with a logged error,
never applied, never a crash, and the gap it leaves is repaired by WalSync (or the
bootstrap starts again), so the replica ends at the honest digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from kevo_repl.wire import pb
from kevo_repl.wire.compression import deflate
from kevo_repl.wire.envelope import TOPIC_ZSTD, encode_beacon
from tests.faults.checkers import count_events
from tests.faults.hostile_primary import HostilePrimary, make_record
from tests.nodes import Cluster, Node, wait_for
from tests.test_hostile_replica import wait_ready


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[HostilePrimary]:
    with HostilePrimary(tmp_path / "fake") as hp:
        yield hp


def follow_compressed(cluster: Cluster, fake: HostilePrimary) -> Node:
    replica = cluster.replica("r0", fake.address, "--compression", "zstd")
    wait_for("replica joins compressed", lambda: replica.digest() == fake.expected_digest)
    return replica


def refusals(replica: Node) -> list[str]:
    """The errors of the replica's ``bad_stream_frame`` lines, oldest first (one line per
    second at most, naming the latest refusal: so the test sends one bad frame at a time)."""
    lines = replica.log_path.read_text(errors="replace").splitlines()
    return [json.loads(x)["error"] for x in lines if '"bad_stream_frame"' in x]


def refused(replica: Node, fake: HostilePrimary, frame: bytes) -> str:
    """Publish one bad frame; the error the replica logged for it."""
    seen = len(refusals(replica))
    fake.publish([frame])

    def logged() -> str | None:
        replica.assert_alive()
        errors = refusals(replica)
        return errors[-1] if len(errors) > seen else None

    return wait_for("the replica refused the frame", logged)


def stream_frames(record: bytes) -> list[tuple[bytes, str]]:
    """Bad topic-Z frames carrying (or pretending to carry) ``record``, and what the
    replica's refusal says."""
    good = deflate(record)
    flipped = bytearray(good)
    flipped[-8] ^= 0x04  # in the last block: inflates to damaged bytes, or not at all
    sizeless = zstandard.ZstdCompressor(write_content_size=False)
    return [
        (bytes(flipped), "crc32c mismatch|compressed frame refused"),
        (good[: len(good) // 2], "compressed frame refused"),
        (b"\x28\xb5\x2f\xfd garbage", "not a zstd frame|compressed frame refused"),
        (good + b"\x00\x01", "unused data"),
        (deflate(b"\x00" * (64 * 1024 * 1024)), "claims 67108864 bytes, over the limit of 262144"),
        (sizeless.compress(b"\x00" * (64 * 1024 * 1024)), "refused .*limit 262144 bytes"),
    ]


def test_bad_compressed_stream_frames_are_refused_and_repaired(
    cluster: Cluster, fake: HostilePrimary
) -> None:
    replica = follow_compressed(cluster, fake)
    before = fake.expected_digest
    forged = make_record(fake.last_lsn + 1, [b"forged-key"], [b"v" * 300], fake.history)
    for frame, says in stream_frames(forged):
        wait_ready(replica)
        assert re.search(says, refused(replica, fake, TOPIC_ZSTD + frame)), says
        assert replica.digest() == before, f"after a frame refused for {says!r}"
    fake.append_record()  # the record the bad frames stood for, served by WalSync only
    fake.publish([encode_beacon(fake.history, fake.last_lsn, 1)])  # the gap shows: WalSync
    wait_for("repaired by WalSync", lambda: replica.digest() == fake.expected_digest)
    assert count_events(replica.log_path, "bootstrap_start") == 0
    assert fake.requests_seen.get("wal_sync", 0) >= 2  # the join's and the repair's


def test_a_walsync_bomb_is_refused_and_asked_again(cluster: Cluster, fake: HostilePrimary) -> None:
    replica = follow_compressed(cluster, fake)
    fake.append_record()
    bombs = [0]

    def bomb(req: pb.Request, honest: list[bytes]) -> list[bytes]:
        if req.WhichOneof("body") != "wal_sync" or bombs[0] >= 2:
            return honest
        bombs[0] += 1
        sync = pb.WalSyncResponse(primary_lsn=fake.last_lsn, compressed=deflate(b"\x00" * 10**9))
        return [pb.Response(request_id=req.request_id, wal_sync=sync).SerializeToString()]

    fake.responder = bomb
    fake.publish([encode_beacon(fake.history, fake.last_lsn, 1)])
    wait_for("the honest reply after two bombs", lambda: replica.digest() == fake.expected_digest)
    assert bombs[0] == 2
    log = replica.log_path.read_text(errors="replace")
    assert log.count("WalSync reply: compressed frame claims 1000000000 bytes") >= 2
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_a_damaged_compressed_bootstrap_chunk_restarts_the_bootstrap(
    cluster: Cluster, tmp_path: Path
) -> None:
    with HostilePrimary(tmp_path / "fake", bootstrap_required=True) as fake:
        damaged = [0]

        def damage(req: pb.Request, honest: list[bytes]) -> list[bytes]:
            if req.WhichOneof("body") != "bootstrap" or len(honest) < 3 or damaged[0]:
                return honest
            damaged[0] += 1
            resp = pb.Response.FromString(honest[1])
            chunk = bytearray(resp.bootstrap.compressed)
            chunk[len(chunk) // 2] ^= 0x20  # zstd's content checksum finds it
            resp.bootstrap.compressed = bytes(chunk)
            return [honest[0], resp.SerializeToString(), *honest[2:]]

        fake.responder = damage
        replica = cluster.replica("r0", fake.address, "--compression", "zstd")
        wait_for("honest after one damaged chunk", lambda: replica.digest() == fake.expected_digest)
        assert damaged[0] == 1
        assert count_events(replica.log_path, "bootstrap_start") == 2
        assert count_events(replica.log_path, "bootstrap_done") == 1
        assert "bootstrap chunk: compressed frame refused" in replica.log_path.read_text()
