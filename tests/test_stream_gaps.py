"""A real replica that loses a stream frame: the records after the hole are held, not
fetched again, and WalSync brings the hole alone (``core/stream_ahead.py``).

On a saturated link a PUB queue drops frames and the later ones still arrive; fetching
everything from the hole on sent those bytes twice. The fake primary here answers WalSync
up to ``to_lsn`` only, so the replica reaches the honest digest only if it applied the
record it held.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kevo_repl.wire.compression import deflate
from kevo_repl.wire.envelope import TOPIC_ZSTD, encode_beacon, encode_wal_frame
from tests.faults.checkers import count_events
from tests.faults.hostile_primary import HostilePrimary
from tests.nodes import Cluster, wait_for


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[HostilePrimary]:
    with HostilePrimary(tmp_path / "fake") as hp:
        yield hp


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_records_past_a_lost_frame_are_held_and_only_the_hole_is_fetched(
    cluster: Cluster, fake: HostilePrimary, compression: str
) -> None:
    replica = cluster.replica("r0", fake.address, "--compression", compression)
    wait_for("replica joins", lambda: replica.digest() == fake.expected_digest)
    syncs = fake.requests_seen.get("wal_sync", 0)
    fake.beacons = False  # a beacon would announce the new records before the frame does
    fake.append_record()  # 51..60: its frame is "lost"
    held = fake.append_record()  # 61..70: arrives past the hole
    fake.publish([TOPIC_ZSTD + deflate(held) if compression == "zstd" else encode_wal_frame(held)])
    wait_for("applied through the held record", lambda: replica.digest() == fake.expected_digest)
    fake.beacons = True
    assert fake.requests_seen["wal_sync"] == syncs + 1
    assert fake.last_request["wal_sync"].wal_sync.from_lsn == 51
    assert fake.last_request["wal_sync"].wal_sync.to_lsn == 60
    fake.publish([encode_beacon(fake.history, fake.last_lsn, 1)])
    assert replica.digest() == fake.expected_digest
    assert count_events(replica.log_path, "gap_detected") == 1
    assert count_events(replica.log_path, "bootstrap_start") == 0
