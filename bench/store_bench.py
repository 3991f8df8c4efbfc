"""State store throughput: apply with random keys (sync vs tuned) and bootstrap writes.

Run: ``.venv/bin/python -m bench.store_bench [--json] [--seconds S] [--dir DIR]``. Every row
writes 256-entry batches of random 16-byte keys and 100-byte values into a fresh store in a
temporary directory (default: beside the repository, on the project's disk) for about
``--seconds`` of timed work; only the store calls are timed, not the data generation.

Rows: plain LMDB with its defaults (sync per commit, one ``put`` per entry) as the baseline;
the store with ``sync_commits=True``; the tuned store (no sync, writemap, putmulti) fed
lists and fed the columns of a parsed ``WalBatch`` as the nodes do; ``apply_many`` of four
batches per transaction (a replica coalescing under load); the bootstrap writer appending
sequential keys; streaming a snapshot in chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.core.ops import OP_PUT
from kevo_repl.wire import pb

__all__ = ["Row", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH, KEY_BYTES, VALUE_BYTES = 256, 16, 100
HISTORY = bytes(range(16))
VALUES = [os.urandom(VALUE_BYTES) for _ in range(BATCH)]
OPS = [OP_PUT] * BATCH


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    entries: int
    seconds: float
    entries_per_s: int
    file_mib: float


Columns = tuple[Sequence[int], Sequence[bytes], Sequence[bytes]]


def random_columns() -> Columns:
    blob = os.urandom(KEY_BYTES * BATCH)
    return OPS, [blob[i : i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)], VALUES


def parsed_columns() -> Columns:
    """Columns of a parsed WalBatch: protobuf repeated fields, as ``decode_batch`` returns."""
    _, keys, values = random_columns()
    payload = pb.WalBatch(ops=[pb.OP_PUT] * BATCH, keys=keys, values=values, history_id=HISTORY)
    batch = pb.WalBatch.FromString(payload.SerializeToString())
    return batch.ops, batch.keys, batch.values


Step = Callable[[int], tuple[int, float]]
"""``step(i)`` writes batch ``i``; returns entries written and seconds spent in the store."""


def timed(name: str, path: Path, seconds: float, step: Step) -> Row:
    """Run ``step`` until ``seconds`` of store time (or three times that of wall time)."""
    busy = 0.0
    entries = 0
    i = 0
    wall_deadline = time.perf_counter() + 3 * seconds
    while busy < seconds and time.perf_counter() < wall_deadline:
        written, spent = step(i)
        busy += spent
        entries += written
        i += 1
    size = path.stat().st_blocks * 512 / 2**20 if path.exists() else 0.0
    return Row(name, entries, round(busy, 3), round(entries / busy), round(size, 1))


def row_plain_lmdb(path: Path, seconds: float) -> Row:
    env = lmdb.open(str(path), subdir=False, map_size=2**30, max_dbs=2)
    db = env.open_db(b"data")

    def step(i: int) -> tuple[int, float]:
        _, keys, values = random_columns()
        started = time.perf_counter()
        with env.begin(write=True) as txn:
            for key, value in zip(keys, values, strict=True):
                txn.put(key, value, db=db)
        return BATCH, time.perf_counter() - started

    try:
        return timed("lmdb defaults: sync, put per entry", path, seconds, step)
    finally:
        env.close()


def row_store(
    name: str, path: Path, seconds: float, make: Callable[[], Columns], **kw: bool
) -> Row:
    store = StateStore.open(path, **kw)

    def step(i: int) -> tuple[int, float]:
        first = i * BATCH + 1
        ops, keys, values = make()
        started = time.perf_counter()
        store.apply(first, first + BATCH - 1, HISTORY, ops, keys, values)
        return BATCH, time.perf_counter() - started

    with store:
        return timed(name, path, seconds, step)


def row_apply_many(path: Path, seconds: float, per_txn: int = 4) -> Row:
    store = StateStore.open(path)

    def step(i: int) -> tuple[int, float]:
        base = i * per_txn * BATCH
        batches = [
            (base + j * BATCH + 1, base + (j + 1) * BATCH, *random_columns())
            for j in range(per_txn)
        ]
        started = time.perf_counter()
        store.apply_many(batches, HISTORY)
        return per_txn * BATCH, time.perf_counter() - started

    with store:
        return timed(f"store tuned, apply_many x{per_txn} batches/txn", path, seconds, step)


def row_bootstrap(live: Path, seconds: float) -> Row:
    writer = StateStore.begin_bootstrap(live)

    def step(i: int) -> tuple[int, float]:
        keys = [b"%016d" % (i * BATCH + j) for j in range(BATCH)]
        started = time.perf_counter()
        writer.add(keys, VALUES)
        return BATCH, time.perf_counter() - started

    try:
        return timed("bootstrap writer, sequential keys", writer.path, seconds, step)
    finally:
        writer.abort()


def row_snapshot_read(path: Path, seconds: float, keys: int = 512 * 1024) -> Row:
    """Stream a whole snapshot in 256 KiB chunks (the primary's side of a bootstrap)."""
    with StateStore.open(path) as store:
        for i in range(keys // BATCH):  # untimed fill
            ops, batch_keys, values = random_columns()
            store.apply(i * BATCH + 1, (i + 1) * BATCH, HISTORY, ops, batch_keys, values)

        def step(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            with store.snapshot() as snap:
                sent = sum(len(chunk_keys) for chunk_keys, _ in snap.chunks(256 * 1024))
            return sent, time.perf_counter() - started

        return timed(f"snapshot chunks of 256 KiB, {keys:,} keys", path, seconds, step)


def machine(directory: Path) -> dict[str, str]:
    try:
        out = subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True).stdout
        fields = out.splitlines()[-1].split()
        filesystem = f"{fields[1]} on {fields[0]}"
    except (OSError, IndexError):
        filesystem = "unknown"
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "lmdb": f"py-lmdb {lmdb.__version__}, liblmdb {'.'.join(map(str, lmdb.version()))}",
        "filesystem": filesystem,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed work per row")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT.parent, help="where stores go")
    args = parser.parse_args(argv)
    s = args.seconds
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=args.dir) as tmp:
        d = Path(tmp)
        info = machine(d)
        jobs: list[Callable[[], Row]] = [
            lambda: row_plain_lmdb(d / "plain.mdb", s),
            lambda: row_store("store, sync_commits=True", d / "sync.mdb", s, random_columns,
                              sync_commits=True),
            lambda: row_store("store tuned (lists)", d / "tuned.mdb", s, random_columns),
            lambda: row_store("store tuned (parsed WalBatch)", d / "pb.mdb", s, parsed_columns),
            lambda: row_apply_many(d / "many.mdb", s),
            lambda: row_bootstrap(d / "boot.mdb", s),
            lambda: row_snapshot_read(d / "snap.mdb", s),
        ]  # fmt: skip
        for job in jobs:
            rows.append(job())
            for leftover in d.iterdir():  # unlinked dirty pages are dropped, not written back
                leftover.unlink()
            if not args.json:
                r = rows[-1]
                print(
                    f"{r.name:<45} {r.entries_per_s:>10,} entries/s "
                    f"({r.entries:,} entries in {r.seconds}s, file {r.file_mib} MiB allocated)",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
