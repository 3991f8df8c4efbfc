"""WAL append throughput with fsync=always: 1 and 16 writer threads x 1/16/256-entry batches.

Run: ``.venv/bin/python -m bench.wal_bench [--json] [--seconds S] [--dir DIR]``. Each cell
appends for ``--seconds`` into a fresh log in a temporary directory (default: beside the
repository, i.e. on the same disk as the project) and reports entries/s, MB/s of records and
how many fdatasyncs group commit needed. Payloads are real serialized ``WalBatch`` messages
(16-byte keys, 100-byte values), as the primary writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kevo_repl.adapters import wal_files
from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog
from kevo_repl.wire import pb

__all__ = ["Cell", "main", "run_cell", "walbatch_payload"]

REPO_ROOT = Path(__file__).resolve().parent.parent
THREADS = (1, 16)
BATCH_ENTRIES = (1, 16, 256)
KEY_BYTES, VALUE_BYTES = 16, 100


@dataclass(frozen=True, slots=True)
class Cell:
    threads: int
    batch_entries: int
    seconds: float
    appends: int
    entries_per_s: float
    mb_per_s: float
    fdatasyncs: int
    appends_per_sync: float


def walbatch_payload(entries: int, seed: int) -> bytes:
    """A serialized WalBatch of ``entries`` puts, as a client batch sealed by the primary."""
    keys = [f"k{seed:05d}{i:010d}".encode()[:KEY_BYTES] for i in range(entries)]
    values = [(f"v{seed}-{i}-".encode() * VALUE_BYTES)[:VALUE_BYTES] for i in range(entries)]
    batch = pb.WalBatch(
        ops=[pb.OP_PUT] * entries,
        keys=keys,
        values=values,
        history_id=bytes(range(16)),
        commit_time_us=1_700_000_000_000_000,
    )
    return batch.SerializeToString()


def run_cell(directory: Path, threads: int, entries: int, seconds: float) -> Cell:
    """Append from ``threads`` threads for ``seconds``; one fresh log per cell."""
    payloads = [walbatch_payload(entries, seed) for seed in range(threads)]
    wal = WriteAheadLog.open(directory, fsync=FsyncPolicy.ALWAYS)
    start_barrier = threading.Barrier(threads + 1)
    deadline = 0.0

    def writer(payload: bytes) -> None:
        start_barrier.wait()
        while time.perf_counter() < deadline:
            wal.append(payload, entries)

    workers = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for w in workers:
        w.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start_barrier.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    stats = wal.stats
    wal.close()
    return Cell(
        threads=threads,
        batch_entries=entries,
        seconds=round(elapsed, 3),
        appends=stats.appends,
        entries_per_s=round(stats.appends * entries / elapsed),
        mb_per_s=round(stats.bytes_written / elapsed / 1e6, 1),
        fdatasyncs=stats.syncs,
        appends_per_sync=round(stats.appends / max(stats.syncs, 1), 2),
    )


def machine(directory: Path) -> dict[str, str]:
    try:
        df = (
            subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[-1]
            .split()
        )
        filesystem = f"{df[1]} on {df[0]}"
    except (OSError, subprocess.CalledProcessError, IndexError):
        filesystem = "unknown"
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": filesystem,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each cell")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT.parent, help="where temp logs go")
    parser.add_argument(
        "--prealloc-bytes",
        type=int,
        default=wal_files.PREALLOC_BYTES,
        help="zero-fill step of the active segment (0: the file grows with every record)",
    )
    args = parser.parse_args(argv)
    wal_files.PREALLOC_BYTES = args.prealloc_bytes
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="wal-bench-", dir=args.dir) as tmp:
        info = machine(Path(tmp))
        for threads in THREADS:
            for entries in BATCH_ENTRIES:
                cell_dir = Path(tmp) / f"t{threads}-b{entries}"
                cells.append(run_cell(cell_dir, threads, entries, args.seconds))
                if not args.json:
                    c = cells[-1]
                    print(
                        f"threads={c.threads:<3} batch={c.batch_entries:<4} "
                        f"{c.entries_per_s:>10,} entries/s {c.mb_per_s:>7.1f} MB/s "
                        f"{c.fdatasyncs:>6} fdatasyncs ({c.appends_per_sync} appends/sync)",
                        flush=True,
                    )
    info["prealloc_bytes"] = str(args.prealloc_bytes)
    if args.json:
        print(json.dumps({"machine": info, "cells": [asdict(c) for c in cells]}, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
