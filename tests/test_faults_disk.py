"""Disk faults: a WAL torn at random offsets, a bit flipped mid-log, a replica's disk full.

The primary is SIGKILLed before its WAL is touched. A torn tail (a crash mid-append of a
batch nobody was told about) must be cut and the node must start with everything acked; a
flipped bit in the middle of the log must stop it at start with the file and offset in the
message. A replica whose disk fills reports ERROR with a message, keeps serving reads,
corrupts nothing and catches up once space returns.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from kevo_repl.core.errors import BadRecordError, TornRecordError
from kevo_repl.core.record import decode_record
from kevo_repl.wire import pb
from tests.faults.checkers import count_events, verify_acked, wait_converged
from tests.faults.hostile_primary import make_record
from tests.faults.load import Writer
from tests.faults.system import mount_tmpfs, resize_tmpfs, tmpfs_skip_reason
from tests.nodes import Cluster, Node, wait_for
from tests.test_replication_e2e import write_batches

SEGMENT_HEADER = 40  # kevo_repl/adapters/wal_segments.py


def last_segment(node: Node) -> Path:
    return sorted((node.log_path.parent / node.name / "wal").glob("*.wal"))[-1]


def record_offsets(segment: Path) -> list[tuple[int, int]]:
    """(offset, end) of every whole record in ``segment``, in order."""
    buf = segment.read_bytes()
    out, offset = [], SEGMENT_HEADER
    while offset < len(buf):
        try:
            rec = decode_record(buf, offset)
        except (TornRecordError, BadRecordError):
            break
        out.append((offset, rec.end_offset))
        offset = rec.end_offset
    return out


def killed_primary_with_data(cluster: Cluster) -> tuple[Node, dict[bytes, bytes]]:
    primary = cluster.primary("primary", "--fsync", "always")
    write_batches(primary, batches=30, size=20, value_bytes=100)
    acked = {}
    with primary.client() as c:
        for i in range(50):
            key, value = b"acked-%d" % i, b"value-%d" % i
            c.put(key, value)
            acked[key] = value
    primary.kill()
    return primary, acked


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_torn_tail_at_a_random_offset_is_cut_and_the_primary_starts(
    cluster: Cluster, seed: int
) -> None:
    primary, acked = killed_primary_with_data(cluster)
    rng = random.Random(seed)
    segment = last_segment(primary)
    records = record_offsets(segment)
    end = records[-1][1]
    last_lsn = 600 + 50
    torn = make_record(
        last_lsn + 1, [b"torn-%d" % i for i in range(40)], [b"x" * 200] * 40, b"h" * 16
    )
    if seed % 2:  # the file ends inside the record (a short write at the end of the file)
        cut = end + rng.randrange(1, len(torn))
        with segment.open("r+b") as f:
            f.seek(end)
            f.write(torn)
            f.truncate(cut)
    else:  # sectors past the cut never reached the disk: preallocated zeros remain
        cut = (end + rng.randrange(1, len(torn) - 1024)) // 512 * 512 + 512
        with segment.open("r+b") as f:
            f.seek(end)
            f.write(torn[: cut - end])
    print(f"seed {seed}: torn record at {end}, cut at {cut} ({segment.name})")
    cluster.restart(primary)
    assert count_events(primary.log_path, "wal_truncated") == 1
    with primary.client() as c:
        assert c.status_message().lsn == last_lsn
        assert c.get(b"torn-0") is None
        c.put(b"after", b"restart")
    verify_acked(primary, acked)


def test_bit_flip_mid_log_refuses_to_start_naming_file_and_offset(cluster: Cluster) -> None:
    primary, acked = killed_primary_with_data(cluster)
    segment = last_segment(primary)
    records = record_offsets(segment)
    start, end = records[len(records) // 2]
    rng = random.Random(11)
    pos = rng.randrange(start + 32, end)  # inside the payload: only the crc can tell
    bit = 1 << rng.randrange(8)
    data = bytearray(segment.read_bytes())
    data[pos] ^= bit
    segment.write_bytes(bytes(data))
    assert primary.proc is not None
    primary.start()
    try:
        code = primary.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("primary started on a corrupt WAL") from None
    assert code != 0
    log = primary.log_path.read_text(errors="replace")
    assert str(segment) in log and f"offset {start}" in log, primary.log_tail(5)
    data[pos] ^= bit  # repaired by the operator: starts, nothing was changed meanwhile
    segment.write_bytes(bytes(data))
    cluster.restart(primary)
    verify_acked(primary, acked)


def test_full_disk_on_a_replica_reports_error_and_recovers(cluster: Cluster) -> None:
    reason = tmpfs_skip_reason()
    if reason:
        pytest.skip(reason)
    primary = cluster.primary("primary", "--fsync", "always")
    mnt = cluster.root / "small-disk"
    with mount_tmpfs(mnt, 80 * 1024 * 1024):  # the 64 MiB initial map fits, growth does not
        try:
            r0 = cluster.replica("r0", primary.address, "--data", str(mnt / "r0"))
            writer = Writer(primary.address, max_writes=20_000, max_seconds=120, value_bytes=8000)
            writer.start()
            try:

                def error_message() -> str | None:
                    with r0.client() as c:
                        s = c.status_message()
                    return s.error_message if s.status == pb.STATUS_ERROR else None

                message = wait_for("r0 reports the full disk", error_message, 120)
                print(f"r0 status error: {message}")
                assert "No space left" in message or "space" in message.lower(), message
                r0.assert_alive()
                with r0.client() as c:
                    assert c.get(b"w-00000000") is not None  # still serves what it has
                mark = len(writer.acked)
                wait_for("primary unaffected", lambda: len(writer.acked) > mark + 50)
            finally:
                writer.stop()
            resize_tmpfs(mnt, 400 * 1024 * 1024)  # space returns
            wait_converged(primary, [r0], 120)
            assert not writer.errors and writer.acked.refused == 0, (writer.errors, writer.acked)
            verify_acked(r0, writer.acked.expected())
            with r0.client() as c:
                s = c.status_message()
                assert s.status == pb.STATUS_READY and not s.error_message
            assert count_events(r0.log_path, "bootstrap_start") == 0
        finally:
            cluster.close()  # nothing may hold the mount when it is unmounted


def test_full_disk_on_the_primary_stops_it_saying_why_and_loses_no_acked_write(
    cluster: Cluster,
) -> None:
    """Regression: a failed WAL write answered ERROR_UNAVAILABLE (as if nothing was written)
    although the record could reappear after a restart, and the node ran on refusing all."""
    reason = tmpfs_skip_reason()
    if reason:
        pytest.skip(reason)
    mnt = cluster.root / "small-disk"
    with mount_tmpfs(mnt, 72 * 1024 * 1024):  # the 64 MiB store map fits, a big WAL does not
        try:
            data = mnt / "primary"
            primary = cluster.primary("primary", "--data", str(data), "--fsync", "always")
            writers = [
                Writer(primary.address, prefix=f"w{i}", max_seconds=60, value_bytes=4000)
                for i in range(4)
            ]
            for w in writers:
                w.start()
            assert primary.proc is not None
            code = primary.proc.wait(90)
            for w in writers:
                w.stop()
            assert code == 1, primary.log_tail()
            log = primary.log_path.read_text()
            assert "node_failed" in log and "No space left" in log, primary.log_tail()
            assert sum(w.acked.unknown for w in writers) >= 1  # told: outcome unknown
            assert all(w.acked.refused == 0 for w in writers)
            resize_tmpfs(mnt, 400 * 1024 * 1024)
            cluster.restart(primary)
            for w in writers:
                verify_acked(primary, w.acked.expected())
        finally:
            cluster.close()
