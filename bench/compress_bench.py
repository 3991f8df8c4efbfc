"""Per-record compression of WAL records: ratio and CPU per MB, by codec and record size.

Groundwork for the WAN issue (14): which codec a follower should ask for. Records are real
WAL records (``seal_batch`` + ``encode_record``, as a primary writes them) of 1, 16 and 256
entries, with values either JSON-like documents from a fixed-seed generator (field names,
repeated enums, numbers, ids: what an application stores) or random bytes (the worst case).
Each record is compressed alone, as the stream would send it; timings are medians of
repeated passes over the same records. Codecs: zstd levels 1 and 3 (``zstandard``), LZ4 block
(``lz4``). Decompression is bounded by the record size (``max_output_size``), as a follower
must bound it.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kevo_repl.core.ops import OP_PUT
from kevo_repl.core.record import encode_record
from kevo_repl.wire.batch import encode_client_batch, seal_batch

__all__ = ["json_like_value", "run_compress_bench"]

_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
_STATUS = ["active", "pending", "suspended", "closed"]


def json_like_value(rng: random.Random) -> bytes:
    """One application record, ~150-250 bytes of JSON."""
    doc = {
        "id": f"{rng.getrandbits(64):016x}",
        "user": f"user-{rng.randrange(100_000):06d}",
        "status": rng.choice(_STATUS),
        "score": round(rng.random() * 1000, 3),
        "tags": rng.sample(_WORDS, 3),
        "created_at": 1_700_000_000 + rng.randrange(10_000_000),
        "note": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(3, 9))),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _records(entries: int, kind: str, count: int, rng: random.Random) -> list[bytes]:
    out = []
    lsn = 1
    for _ in range(count):
        keys = [b"key:%012d" % rng.randrange(1_000_000) for _ in range(entries)]
        if kind == "json":
            values = [json_like_value(rng) for _ in range(entries)]
        else:
            values = [rng.randbytes(200) for _ in range(entries)]
        payload = seal_batch(
            [encode_client_batch([OP_PUT] * entries, keys, values)], b"h" * 16, 1_700_000_000
        )
        out.append(encode_record(lsn, lsn + entries - 1, payload))
        lsn += entries
    return out


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]]:
    import lz4.block
    import zstandard

    out: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]] = {}
    for level in (1, 3):
        comp = zstandard.ZstdCompressor(level=level)
        decomp = zstandard.ZstdDecompressor()

        def bounded(b: bytes, n: int, d: Any = decomp) -> bytes:
            out: bytes = d.decompress(b, max_output_size=n)
            return out

        out[f"zstd-{level}"] = (comp.compress, bounded)
    out["lz4"] = (
        lambda b: lz4.block.compress(b, store_size=False),
        lambda b, n: lz4.block.decompress(b, uncompressed_size=n),
    )
    return out


def _compress_all(compress: Callable[[bytes], bytes], records: list[bytes]) -> None:
    for r in records:
        compress(r)


def _decompress_all(
    decompress: Callable[[bytes, int], bytes], packed: list[bytes], sizes: list[int]
) -> None:
    for p, n in zip(packed, sizes, strict=True):
        decompress(p, n)


def _median_s(fn: Callable[[], object], passes: int = 5) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_compress_bench(seed: int = 14) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for kind in ("json", "random"):
        for entries, count in ((1, 2000), (16, 500), (256, 40)):
            records = _records(entries, kind, count, rng)
            raw = sum(len(r) for r in records)
            for name, (compress, decompress) in _codecs().items():
                packed = [compress(r) for r in records]
                sizes = [len(r) for r in records]
                c_s = _median_s(partial(_compress_all, compress, records))
                d_s = _median_s(partial(_decompress_all, decompress, packed, sizes))
                rows.append(
                    {
                        "values": kind,
                        "entries_per_record": entries,
                        "record_bytes": raw // count,
                        "codec": name,
                        "ratio": round(raw / sum(len(p) for p in packed), 2),
                        "compress_ms_per_mb": round(c_s * 1000 / (raw / 1e6), 2),
                        "decompress_ms_per_mb": round(d_s * 1000 / (raw / 1e6), 2),
                        "compress_us_per_record": round(c_s * 1e6 / count, 1),
                    }
                )
    return rows


if __name__ == "__main__":
    for row in run_compress_bench():
        print(json.dumps(row))
