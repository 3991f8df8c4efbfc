"""A seeded generator of malformed messages: garbage, mutated valid messages, forgeries.

Deterministic for a seed (a failing run is replayed by its seed). Mutations are the classic
ones of structure-blind fuzzers (bit flips, byte sets, truncation, insertion, splicing,
random tails), applied to a corpus of valid frames, mixed with pure garbage and with
*forgeries*: records whose crc is recomputed so they pass the checksum and must be refused
by protocol rules instead (LSN range vs. entry count, straddling ranges, other history).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from kevo_repl.core.record import encode_record
from kevo_repl.wire import pb
from kevo_repl.wire.envelope import TOPIC_BEACON, TOPIC_WAL, encode_beacon
from tests.faults.hostile_primary import make_record

__all__ = [
    "END_MARKER",
    "MARKER_LOG",
    "Mutator",
    "forged_records",
    "request_corpus",
    "response_corpus",
]

# A 'W' frame whose record magic is b"ZQ": the replica logs "bad magic b'ZQ'", which tells a
# test that everything published before it was consumed (SUB drops unsubscribed topics, so
# the marker must use a real topic). The fuzzer never emits that magic.
END_MARKER = TOPIC_WAL + b"\x00" * 8 + b"ZQ" + b"\x00" * 22
MARKER_LOG = "bad magic b'ZQ'"
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)


class Mutator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def garbage(self, max_len: int = 256) -> bytes:
        n = self.rng.choice((0, 1, 2, 3, 8, 16, self.rng.randrange(max_len + 1)))
        return self.rng.randbytes(n)

    def mutate(self, data: bytes) -> bytes:
        """One to four stacked mutations of ``data``."""
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.randrange(7)
            if op == 0 and buf:  # flip one bit
                i = self.rng.randrange(len(buf))
                buf[i] ^= 1 << self.rng.randrange(8)
            elif op == 1 and buf:  # set an interesting byte
                buf[self.rng.randrange(len(buf))] = self.rng.choice(_INTERESTING)
            elif op == 2 and buf:  # truncate
                del buf[self.rng.randrange(len(buf)) :]
            elif op == 3:  # insert random bytes
                i = self.rng.randrange(len(buf) + 1)
                buf[i:i] = self.rng.randbytes(self.rng.randint(1, 8))
            elif op == 4:  # random tail (protobuf parses trailing fields: extra/unknown ones)
                buf += self.rng.randbytes(self.rng.randint(1, 32))
            elif op == 5 and len(buf) > 2:  # duplicate a slice
                a = self.rng.randrange(len(buf))
                b = self.rng.randrange(a, len(buf))
                buf[b:b] = buf[a:b]
            elif op == 6 and buf:  # overwrite a varint-ish run with 0xff (huge lengths)
                i = self.rng.randrange(len(buf))
                buf[i : i + 5] = b"\xff" * 5
        return bytes(buf)

    def frames(self, corpus: Sequence[bytes], count: int) -> Iterator[bytes]:
        """``count`` malformed frames: 20% garbage, 80% mutations of ``corpus`` entries."""
        for _ in range(count):
            if self.rng.random() < 0.2:
                yield self.garbage()
            else:
                yield self.mutate(self.rng.choice(corpus))

    def stream_frames(self, corpus: Sequence[bytes], count: int) -> Iterator[bytes]:
        """Like ``frames`` but never with the magic of ``END_MARKER``."""
        for frame in self.frames(corpus, count):
            if frame[9:11] == b"ZQ":
                frame = frame[:9] + b"KW" + frame[11:]
            yield frame


def request_corpus() -> list[bytes]:
    """Valid requests of every type that, unmutated, cannot change stored data."""
    reqs = [
        pb.Request(request_id=1, status=pb.StatusRequest()),
        pb.Request(request_id=2, digest=pb.DigestRequest()),
        pb.Request(request_id=3, get=pb.GetRequest(key=b"k", min_lsn=0, timeout_ms=5)),
        pb.Request(request_id=4, heartbeat=pb.HeartbeatRequest(replica_id="x", applied_lsn=3)),
        pb.Request(request_id=5, ack=pb.AckRequest(replica_id="x", applied_lsn=9)),
        pb.Request(request_id=6, wal_sync=pb.WalSyncRequest(from_lsn=1, max_bytes=65536)),
        pb.Request(request_id=7, bootstrap=pb.BootstrapRequest(session_id=3, credit=2)),
        pb.Request(request_id=8, register=pb.RegisterRequest(replica_id="fz", applied_lsn=1)),
        # writes that the primary must refuse as they are (mutations may make them valid:
        # the fuzz test accounts for every write the node acknowledges)
        pb.Request(request_id=9, put=pb.PutRequest(key=b"", value=b"v")),
        pb.Request(request_id=10, batch=pb.BatchRequest(batch=b"\x08\x07\x12\x01k\x1a\x01v")),
        pb.Request(request_id=11, delete=pb.DeleteRequest(key=b"")),
    ]
    return [r.SerializeToString() for r in reqs]


def response_corpus(history: bytes, records: Sequence[bytes]) -> list[bytes]:
    """Valid-looking responses a replica's DEALER could receive."""
    resps = [
        pb.Response(request_id=1, heartbeat=pb.HeartbeatResponse(primary_lsn=5)),
        pb.Response(
            request_id=2,
            register=pb.RegisterResponse(primary_lsn=50, retained_from_lsn=1, history_id=history),
        ),
        pb.Response(
            request_id=3,
            wal_sync=pb.WalSyncResponse(records=list(records[:2]), primary_lsn=50),
        ),
        pb.Response(
            request_id=4,
            bootstrap=pb.BootstrapChunk(
                session_id=1, seq=3, keys=[b"a"], values=[b"b"], snapshot_lsn=9
            ),
        ),
        pb.Response(request_id=5, error=pb.Error(code=pb.ERROR_CREDIT, message="x")),
    ]
    return [r.SerializeToString() for r in resps]


def forged_records(history: bytes, applied_lsn: int, rng: random.Random) -> list[bytes]:
    """crc-valid records a replica at ``applied_lsn`` must never apply."""
    other = rng.randbytes(16)
    k, v = [b"forged-key"], [b"forged-value"]
    nxt = applied_lsn + 1
    out = [
        make_record(max(1, applied_lsn - 1), [b"a", b"b", b"c"], [b"1"] * 3, history),  # straddles
        make_record(max(1, applied_lsn), k, v, history),  # already applied LSN, other content
        make_record(nxt, k, v, history, count=3),  # LSN range longer than its entries
        make_record(nxt, [b"a", b"b"], [b"1", b"2"], history, count=1),  # shorter
        encode_record(nxt, nxt, b"\xff\xff\xff"),  # payload is not a WalBatch
        make_record(nxt + 5, k, v, history),  # a gap (repaired honestly by WalSync)
        make_record(nxt, k, v, other),  # right LSN, other history
    ]
    return out


def stream_corpus(history: bytes, records: Sequence[bytes], last_lsn: int) -> list[bytes]:
    """Valid stream frames (records, beacons) to mutate."""
    frames = [TOPIC_WAL + r for r in records]
    frames.append(encode_beacon(history, last_lsn, 1, 1))
    frames.append(TOPIC_BEACON + b"")
    return frames
