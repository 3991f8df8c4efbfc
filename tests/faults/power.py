"""What a power loss leaves on disk, made by hand after a SIGKILL, and memory to measure it by.

A SIGKILL keeps the page cache, so by itself it loses nothing a process wrote. A power loss
also loses what was never synced: the WAL past its last fdatasync (the primary logs each one
when started with ``KEVO_WAL_SYNC_LOG``), and, with LMDB's writemap and no sync, perhaps the
integrity of the store file. ``cut_wal_at_last_sync`` and ``damage_store`` make those.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import lmdb

from kevo_repl.adapters.state_check import check_store
from kevo_repl.adapters.wal_segments import parse_segment_name

__all__ = [
    "cut_wal_at_last_sync",
    "damage_store",
    "garbage_over_pages",
    "rss_anon_mib",
    "store_layout",
]


def cut_wal_at_last_sync(wal_dir: Path, sync_log: Path) -> int:
    """Truncate the WAL to its last fdatasync'd byte (later segments go); returns that LSN."""
    name, offset, lsn = sync_log.read_text().splitlines()[-1].split()
    first = parse_segment_name(name)
    assert first is not None
    for seg in wal_dir.glob("*.wal"):
        seg_first = parse_segment_name(seg.name)
        if seg_first is not None and seg_first > first:
            seg.unlink()
    with (wal_dir / name).open("r+b") as f:
        f.truncate(int(offset))
        os.fsync(f.fileno())
    return int(lsn)


def store_layout(path: Path) -> tuple[int, int]:
    """``(page size, last page number)`` of an intact store."""
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=False, max_dbs=2)
    try:
        return env.stat()["psize"], env.info()["last_pgno"]
    finally:
        env.close()


def garbage_over_pages(path: Path, seed: int, pages: int = 3) -> None:
    """Random bytes over whole data pages (pages 0 and 1 are LMDB's meta pages)."""
    psize, last = store_layout(path)
    rng = random.Random(seed)
    with path.open("r+b") as f:
        for _ in range(pages):
            f.seek(rng.randint(2, max(2, last)) * psize)
            f.write(rng.randbytes(psize))


def damage_store(path: Path, seed: int) -> None:
    """Garbage over enough pages that the store check sees it (a precondition, asserted)."""
    for attempt in range(8):
        garbage_over_pages(path, seed + attempt, pages=12)
        if not check_store(path).ok:
            return
    raise AssertionError(f"could not damage {path} visibly")


def rss_anon_mib(pid: int) -> float:
    """Anonymous resident memory (heap, socket queues) of a process: LMDB's mapped store
    pages are page cache, not what a peer made the node allocate."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no RssAnon for PID {pid}")
