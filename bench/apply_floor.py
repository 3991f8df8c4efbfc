"""The floor of a store apply per entry, by transaction size, alone and beside an fdatasync.

``StateStore.apply_many`` as the nodes call it (random 16 B keys over 100k, 100 B values,
the store opened as a node opens it), one transaction per batch, for batches of 1, 26 (a
D = 1 group) and 256 entries; then the same while another thread loops ``pwrite`` +
``fdatasync`` with a little Python between, as a node's sync helper does. py-lmdb releases
the GIL around every put, so each release may hand the GIL to that thread: the second row
shows what such hand-offs cost the apply.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.core.ops import OP_PUT

__all__ = ["run_apply_floor"]

SIZES = (1, 26, 256)
HISTORY = b"h" * 16


def run_apply_floor(transactions: int = 2000) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="kevo-apply-") as tmp:
        store = StateStore.open(Path(tmp) / "state.mdb")
        lsn = 0

        def timed(per: int) -> float:
            nonlocal lsn
            batches = []
            for _ in range(transactions):
                keys = [b"key:%012d" % rng.randrange(100_000) for _ in range(per)]
                batches.append((lsn + 1, lsn + per, [OP_PUT] * per, keys, [b"v" * 100] * per))
                lsn += per
            start = time.perf_counter()
            for batch in batches:
                store.apply_many([batch], HISTORY, new_history=store.history_id != HISTORY)
            return (time.perf_counter() - start) / transactions

        timed(50)  # warm: the tree holds the key space
        for beside in ("alone", "beside an fdatasync loop"):
            stop = threading.Event()
            syncer = None
            if beside != "alone":
                fd = os.open(Path(tmp) / "wal", os.O_RDWR | os.O_CREAT)

                def loop(fd: int = fd, stop: threading.Event = stop) -> None:
                    n = 0
                    while not stop.is_set():
                        os.pwrite(fd, b"x" * 200, (n % 1000) * 200)
                        os.fdatasync(fd)
                        sum(range(50))  # a little Python between syncs, as a helper has
                        n += 1

                syncer = threading.Thread(target=loop, daemon=True)
                syncer.start()
            for per in SIZES:
                seconds = timed(per)
                rows.append(
                    {
                        "entries_per_txn": per,
                        "us_per_txn": round(seconds * 1e6, 1),
                        "us_per_entry": round(seconds * 1e6 / per, 2),
                        "while": beside,
                    }
                )
            stop.set()
            if syncer is not None:
                syncer.join()
                os.close(fd)
        store.close()
    return rows


if __name__ == "__main__":
    for row in run_apply_floor():
        print(json.dumps(row))
