"""The fault suite's own oracle: the writer's outcome log and ``verify_acked``.

``AckLog.expected()`` must allow exactly the values an acknowledged / unknown / refused
history permits, and ``verify_acked`` must catch a key that went back to an older write (a
batch applied out of order or twice), which a load writing each key once could not show.
"""

from __future__ import annotations

import re

import pytest

from tests.faults.checkers import verify_acked
from tests.faults.load import HOT_EVERY, HOT_KEYS, AckLog, Writer, write_key
from tests.nodes import Cluster, wait_for


def test_every_third_write_overwrites_a_hot_key() -> None:
    keys = [write_key("w", i) for i in range(HOT_EVERY * HOT_KEYS * 2)]
    hot = [k for k in keys if b"-hot-" in k]
    assert len(hot) == len(keys) // HOT_EVERY and len(set(hot)) == HOT_KEYS
    assert keys[0] == b"w-00000000" and keys[HOT_EVERY - 1] == b"w-hot-00"
    assert len(set(keys) - set(hot)) == len(keys) - len(hot)  # the others: written once
    assert len({write_key("w", i, hot_keys=0) for i in range(100)}) == 100


def test_expected_values_follow_the_outcomes_exactly() -> None:
    log = AckLog()
    log.add(b"h", b"v1", lsn=1)
    log.add_unknown(b"h", b"v2")  # before the next ack: superseded by it
    log.add(b"h", b"v3", lsn=5)
    log.add_unknown(b"h", b"v4")  # after the last ack: may or may not have landed
    log.add_refused(b"h", "ERROR_UNAVAILABLE: x")  # changed nothing
    log.add_unknown(b"h", b"v6")
    log.add_refused(b"r", "ERROR_UNAVAILABLE: x")  # only ever refused: absent
    log.add_unknown(b"u", b"u1")  # only ever unknown: absent or that value
    log.add(b"a", b"a1", lsn=6)
    assert log.expected() == {
        b"h": frozenset([b"v3", b"v4", b"v6"]),
        b"r": frozenset([None]),
        b"u": frozenset([None, b"u1"]),
        b"a": frozenset([b"a1"]),
    }
    assert (len(log), log.acked_keys, log.unknown, log.refused) == (3, 2, 4, 2)
    assert log.refusals == ["ERROR_UNAVAILABLE: x"] * 2
    with pytest.raises(AssertionError, match="after 6"):
        log.add(b"z", b"z", lsn=6)  # one write in flight: acknowledged LSNs only grow


def test_verify_acked_catches_a_key_back_at_an_older_write(cluster: Cluster) -> None:
    primary = cluster.primary("primary", "--fsync", "always")
    writer = Writer(primary.address, max_writes=300, max_seconds=60)
    writer.start()
    wait_for("the load wrote everything", lambda: not writer.is_alive())
    writer.stop()
    assert not writer.errors and len(writer.acked) == 300, writer.acked
    assert (writer.acked.unknown, writer.acked.refused) == (0, 0)
    expected = writer.acked.expected()
    assert len(expected) == 200 + HOT_KEYS
    assert verify_acked(primary, expected) == len(expected)
    # What a replica applying the writes to w-hot-00 in the wrong order would hold: its
    # first write's value, not its last one's.
    writes = [i for i in range(300) if write_key("w", i) == b"w-hot-00"]
    assert len(writes) > 1
    stale = b"w:%d:" % writes[0] + writer.pad
    with primary.client() as c:
        c.put(b"w-hot-00", stale)
    with pytest.raises(AssertionError, match=re.escape(f"w-hot-00': b'w:{writes[0]}:")):
        verify_acked(primary, expected)
    with pytest.raises(AssertionError, match=re.escape(f"expected b'w:{writes[-1]}:")):
        verify_acked(primary, expected)
    # ...and an unknown write after the last acknowledged one would make it acceptable.
    writer.acked.add_unknown(b"w-hot-00", stale)
    verify_acked(primary, writer.acked.expected())
    with primary.client() as c:
        c.delete(b"w-00000000")
    with pytest.raises(AssertionError, match=r"w-00000000': absent"):
        verify_acked(primary, expected)
