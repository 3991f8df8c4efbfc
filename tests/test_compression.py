"""Compressed and uncompressed followers of one primary, and a relay between them.

Real node processes on loopback, where ``auto`` means none, so each follower names its
codec. The workload overwrites hot keys, so a record lost, doubled or reordered on the
compressed path (stream, WalSync, bootstrap chunks, a relay's pass-on) changes the digest.
"""

from __future__ import annotations

import signal

from kevo_repl.wire import pb
from tests.faults.checkers import count_events
from tests.nodes import Cluster, Node, converged, wait_for
from tests.test_replication_e2e import batch_items, model_digest, model_of, write_batches

# WAL floor 128 KiB, cap 512 KiB: a follower stopped for 100 KB of writes catches up from
# the WAL, and a late joiner, once 1.1 MB were written, bootstraps.
SMALL = ["--retention-bytes", "131072", "--segment-bytes", "65536"]
VALUE = 500


def status(node: Node) -> pb.StatusResponse:
    with node.client() as c:
        return c.status_message()


def codec_of(primary: Node, replica_id: str) -> int:
    return next(r.compression for r in status(primary).replicas if r.replica_id == replica_id)


def test_mixed_followers_end_digest_equal(cluster: Cluster) -> None:
    primary = cluster.primary("primary", *SMALL)
    zstd = cluster.replica("zstd", primary, "--compression", "zstd")
    plain = cluster.replica("plain", primary, "--compression", "none")
    # A relay that follows compressed and serves both kinds below it.
    leaf_z = cluster.replica("leaf-z", zstd, "--compression", "zstd")
    leaf_n = cluster.replica("leaf-n", zstd, "--compression", "none")
    sizes = [10, 2, 10, 2]  # batches of 100 writes per round
    rounds = [batch_items(n, 100, prefix=f"r{i}-", value_bytes=VALUE) for i, n in enumerate(sizes)]

    def write(i: int) -> int:
        return write_batches(primary, sizes[i], 100, prefix=f"r{i}-", value_bytes=VALUE)

    write(0)
    wait_for("followers converge", lambda: converged(primary, zstd, plain, leaf_z, leaf_n))
    zstd.signal(signal.SIGTERM)  # stopped for a round: catches up by compressed WalSync
    zstd.proc.wait(10)  # type: ignore[union-attr]
    write(1)
    cluster.restart(zstd)
    wait_for("zstd caught up", lambda: converged(primary, zstd, leaf_z, leaf_n))
    write(2)
    wait_for("the WAL moves past LSN 1", lambda: status(primary).retained_from_lsn > 1)
    late = cluster.replica("late", primary, "--compression", "zstd")  # must bootstrap
    lsn = write(3)
    followers = (zstd, plain, leaf_z, leaf_n, late)
    digest = wait_for("all converge", lambda: converged(primary, *followers))
    assert digest == model_digest(model_of([b for r in rounds for b in r]), lsn)

    assert codec_of(primary, "zstd") == pb.CODEC_ZSTD
    assert codec_of(primary, "plain") == pb.CODEC_NONE
    assert codec_of(zstd, "leaf-n") == pb.CODEC_NONE
    for node in (zstd, leaf_z, late):
        s = status(node)
        assert s.compression == pb.CODEC_ZSTD, node.name
        assert 0 < s.upstream_wire_bytes < s.upstream_raw_bytes / 2, (node.name, s)
    for node in (plain, leaf_n):
        s = status(node)
        assert s.compression == pb.CODEC_NONE, node.name
        assert s.upstream_wire_bytes == s.upstream_raw_bytes > 0, node.name
    top = status(primary)
    assert 0 < top.compressed_wire_bytes < top.compressed_raw_bytes / 2
    relay = status(zstd)
    assert 0 < relay.compressed_wire_bytes < relay.compressed_raw_bytes  # passed on to leaf-z

    zs = status(zstd)
    assert zs.catchups >= 1 and zs.bootstraps == 0  # the restart caught up from the WAL
    assert count_events(late.log_path, "bootstrap_start") == 1
    assert count_events(late.log_path, "bootstrap_done") == 1
    for node in followers:
        assert count_events(node.log_path, "bad_stream_frame") == 0, node.name
        assert count_events(node.log_path, "bad_reply") == 0, node.name


def test_a_primary_compresses_only_while_a_follower_asks(cluster: Cluster) -> None:
    primary = cluster.primary()
    plain = cluster.replica("plain", primary, "--compression", "none")
    write_batches(primary, 5, 100, value_bytes=VALUE)
    wait_for("plain converges", lambda: converged(primary, plain))
    assert status(primary).compressed_raw_bytes == 0
    zstd = cluster.replica("zstd", primary, "--compression", "zstd")
    write_batches(primary, 5, 100, prefix="more-", value_bytes=VALUE)
    wait_for("both converge", lambda: converged(primary, plain, zstd))
    assert status(primary).compressed_raw_bytes > 0
