"""Big writes: a group is cut below every follower's frame limit, and nothing kills the node.

Before the byte caps, `kevo-repl load` of 40 lines of 3 MiB values sealed one 96 MiB group,
`encode_record` raised past the record limit and the primary exited with a traceback. Now a
group holds at most 16 MiB, records are cut at the stream's 256 KiB frame limit, and a write
larger than that is a record of its own that followers fetch by WalSync (announced by a
beacon): a replica converges on exactly the primary's state, hot keys overwritten in order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kevo_repl.client import RemoteError, RequestTooLargeError, ValueTooLargeError, batch_request
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.nodes import Cluster, converged, wait_for

MIB = 1024 * 1024


def _value(i: int, size: int) -> bytes:
    seed = hashlib.sha256(b"%d" % i).hexdigest().encode()  # TAB- and newline-free
    return (seed * (size // len(seed) + 1))[:size]


def test_load_of_big_values_keeps_the_primary_up_and_the_replica_equal(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    lines = [b"big-%02d\t%s\n" % (i % 7, _value(i, 3 * MIB)) for i in range(40)]  # hot keys
    src = tmp_path / "big.tsv"
    src.write_bytes(b"".join(lines))
    out = kevo("load", "--node", primary.address, str(src), timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 40
    primary.assert_alive()
    digest = wait_for("replica equal to the primary", lambda: converged(primary, replica), 60)
    assert digest.lsn == 40 and digest.keys == 7
    with replica.client() as c:
        assert c.get(b"big-04") == _value(39, 3 * MIB)  # the last write to a hot key wins
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_small_and_big_writes_interleaved_reach_the_replica_in_order(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    with primary.client(10_000) as c:
        reqs = []
        for i in range(200):
            size = 600 * 1024 if i % 25 == 0 else 100  # over the stream limit now and then
            entries = [(b"hot-%d" % (i % 5), _value(i, size)), (b"k-%04d" % i, b"v")]
            reqs.append(entries)
        answers = c.call_many([batch_request(e) for e in reqs], window=32)
    assert all(a.WhichOneof("body") == "write" for a in answers)
    digest = wait_for("replica equal to the primary", lambda: converged(primary, replica), 60)
    assert digest.lsn == 400
    assert count_events(replica.log_path, "bootstrap_start") == 0


def test_oversized_writes_are_refused_naming_the_limit(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        with pytest.raises(RequestTooLargeError, match="16777216"):  # refused before sending
            c.batch([(b"k%d" % i, b"x" * (3 * MIB)) for i in range(6)])
        with pytest.raises(ValueTooLargeError, match="4194304"):  # one value too big: here
            c.batch([(b"a", b"x"), (b"b", b"x" * (4 * MIB + 1))])
        big = pb.Request(put=pb.PutRequest(key=b"b", value=b"x" * (4 * MIB + 1)))
        with pytest.raises(RemoteError, match="4194304") as refused:  # and by the node
            c.call(big)
        assert refused.value.code == pb.ERROR_TOO_LARGE
        assert c.put(b"after", b"ok").lsn == 1  # nothing was written, the node serves on
