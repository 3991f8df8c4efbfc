"""Seeded fuzzing of real node processes: 100k+ malformed messages per path, then checks.

- a primary's ROUTER gets garbage, multi-frame garbage and mutated valid requests from a raw
  DEALER, pipelined;
- a replica's SUB gets mutated records/beacons and crc-valid forgeries from a fake primary,
  and its DEALER gets unsolicited mutated responses while the fake primary also mangles
  half of its answers to the replica's own requests.

Afterwards the nodes answer status and reads, and their digests are what they were (the
primary's changes only by writes it acknowledged to the fuzzer, if a mutation happened to
build a valid one). ``FUZZ_SEED`` replays a run; the seed is printed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.wire import pb
from kevo_repl.wire.batch import (
    DEFAULT_LIMITS,
    WireError,
    encode_client_batch,
    validate_client_batch,
)
from kevo_repl.wire.envelope import decode_request
from tests.faults.checkers import count_events
from tests.faults.hostile_primary import HostilePrimary
from tests.faults.mutate import (
    Mutator,
    forged_records,
    request_corpus,
    response_corpus,
    stream_corpus,
)
from tests.faults.raw import RawDealer
from tests.nodes import Cluster, wait_for
from tests.test_hostile_replica import assert_unharmed, joined, wait_consumed
from tests.test_replication_e2e import write_batches

SEED = int(os.environ.get("FUZZ_SEED", "20261126"))
ROUTER_MESSAGES = 100_000
STREAM_MESSAGES = 70_000
DEALER_MESSAGES = 35_000


def test_fuzz_primary_router(cluster: Cluster) -> None:
    print(f"FUZZ_SEED={SEED}")
    primary = cluster.primary()
    write_batches(primary, batches=4, size=50)
    before = primary.digest()
    mut = Mutator(SEED)
    corpus = request_corpus()
    answers: list[pb.Response] = []
    sent = expected = 0
    with RawDealer(primary.address) as d:
        frames = mut.frames(corpus, ROUTER_MESSAGES)
        while sent < ROUTER_MESSAGES:
            for frame in [next(frames) for _ in range(min(2000, ROUTER_MESSAGES - sent))]:
                if mut.rng.random() < 0.03:  # multi-frame garbage: must be dropped whole
                    d.send(frame, *(mut.garbage(64) for _ in range(mut.rng.randint(1, 4))))
                else:
                    d.send(frame)
                    expected += valid_write_entries(frame)
                sent += 1
            answers += d.drain()
        final = d.call(pb.Request(request_id=2**63, status=pb.StatusRequest()), 60_000)
        answers += d.drain()
    print(f"sent {sent}, answered {len(answers)}, valid writes among them: {expected} entries")
    assert final.status.lsn >= before.lsn
    primary.assert_alive()
    # A group that was still syncing when Status answered becomes visible once durable.
    wait_for("accepted writes durable", lambda: primary.digest().lsn >= before.lsn + expected)
    after = primary.digest()
    # Only what a mutation turned into a valid write was stored (answered now, or later if
    # it asked to wait for replicas), and it took exactly its own LSNs.
    assert after.lsn == before.lsn + expected, (before, after)
    if not expected:
        assert after == before
    errors = [a for a in answers if a.WhichOneof("body") == "error"]
    assert len(errors) > ROUTER_MESSAGES // 4  # most were refused with a clear Error
    with primary.client() as c:
        assert c.get(b"k00000-0000") is not None
        c.put(b"after-fuzz", b"ok")
        assert c.get(b"after-fuzz") == b"ok"


def valid_write_entries(frame: bytes) -> int:
    """Entries the primary must commit for ``frame``: 0 unless it is a valid write."""
    try:
        req = decode_request(frame)
        kind = req.WhichOneof("body")
        if kind == "put":
            payload = encode_client_batch([OP_PUT], [req.put.key], [req.put.value])
        elif kind == "delete":
            payload = encode_client_batch([OP_DELETE], [req.delete.key], [b""])
        elif kind == "batch":
            payload = req.batch.batch
        else:
            return 0
        return validate_client_batch(
            payload,
            max_key_bytes=DEFAULT_LIMITS.max_key_bytes,
            max_value_bytes=DEFAULT_LIMITS.max_value_bytes,
            max_entries=DEFAULT_LIMITS.max_entries,
        )
    except WireError:
        return 0


def test_fuzz_replica_stream_and_dealer(cluster: Cluster, tmp_path: Path) -> None:
    print(f"FUZZ_SEED={SEED}")
    mut = Mutator(SEED + 1)
    with HostilePrimary(tmp_path / "fake") as fake:
        replica = joined(cluster, fake)
        rng = random.Random(SEED + 2)
        forged = forged_records(fake.history, fake.last_lsn, rng)
        s_corpus = stream_corpus(fake.history, fake.wal + forged, fake.last_lsn)
        r_corpus = response_corpus(fake.history, fake.wal)
        mangled: list[int] = []

        def mangle(req: pb.Request, honest: list[bytes]) -> list[bytes]:
            # Bootstrap chunks carry no checksum (only CURVE authenticates a primary), so a
            # mutation could be a valid, different snapshot: those stay honest here.
            if req.WhichOneof("body") == "bootstrap" or mut.rng.random() < 0.5:
                return honest
            mangled.append(1)
            return [mut.mutate(f) for f in honest] or [mut.mutate(mut.rng.choice(r_corpus))]

        fake.responder = mangle
        for _ in range(STREAM_MESSAGES // 5000):
            fake.publish(list(mut.stream_frames(s_corpus, 5000)))
            fake.send_to_replica(list(mut.frames(r_corpus, DEALER_MESSAGES * 5000 // 70_000)))
            replica.assert_alive()
        wait_consumed(replica, fake, timeout_s=120)
        fake.responder = None
        bad = count_events(replica.log_path, "bad_stream_frame")
        replies = count_events(replica.log_path, "bad_reply")
        print(
            f"replica logged {bad} bad stream frames, {replies} bad replies, {len(mangled)} mangled"
        )
        assert bad > STREAM_MESSAGES // 2
        assert_unharmed(replica, fake)
        wait_for("fake primary still asked for things", lambda: sum(fake.requests_seen.values()))
