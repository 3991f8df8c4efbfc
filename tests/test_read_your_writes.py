"""Read-your-writes under the write path's deferred apply: a primary answers a group before
it stores it (the store apply overlaps the next group's fdatasync), so a read sent right after
an answer must still see the write, on the primary directly and on a replica with
``min_lsn``. Several writers overwrite hot keys of their own concurrently, so groups hold
many writers and a stale read (the value before) or a lost delete changes what is read."""

from __future__ import annotations

import threading

import pytest

from kevo_repl.client import Client
from tests.nodes import Cluster, converged, wait_for

WRITERS = 6
ROUNDS = 150  # per writer: bounded in count; each call has a deadline


def _writer(primary: str, replica: str, n: int, failures: list[str]) -> None:
    keys = [b"ryw:%d:%d" % (n, k) for k in range(3)]  # hot: each overwritten ~50 times
    with Client(primary, timeout_ms=5000) as p, Client(replica, timeout_ms=5000) as r:
        for i in range(ROUNDS):
            key = keys[i % len(keys)]
            if i % 7 == 6:
                lsn, want = p.delete(key).lsn, None
            else:
                want = b"%d" % i
                lsn = p.put(key, want).lsn
            got = p.get(key)
            if got != want:
                failures.append(f"primary: {key!r} read {got!r} after writing {want!r} at {lsn}")
            if i % 5 == 0:
                seen = r.get(key, min_lsn=lsn, timeout_ms=5000)
                later = p.get(key)  # another writer never touches this key: still ours
                if seen != want or later != want:
                    failures.append(f"replica: {key!r} read {seen!r} at {lsn}, not {want!r}")


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_reads_right_after_answers_see_the_write_on_primary_and_replica(
    cluster: Cluster, fsync: str
) -> None:
    primary = cluster.primary("primary", "--fsync", fsync)
    replica = cluster.replica("r1", primary)
    failures: list[str] = []
    threads = [
        threading.Thread(target=_writer, args=(primary.address, replica.address, n, failures))
        for n in range(WRITERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    wait_for("replica converged", lambda: converged(primary, replica))
    primary.assert_alive()
