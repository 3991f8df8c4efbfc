"""A WAL writer to be SIGKILLed by tests/test_wal_crash.py, and the payload oracle it uses.

Usage: ``python tests/wal_writer_child.py DIR SEED``. Appends batches with fsync=always and
prints ``first last`` (flushed) after each ``append`` returns, i.e. once the batch is durable.
Payloads are derived from the LSN range, so the parent can verify every recovered record.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

SEGMENT_BYTES = 16 * 1024  # small, so kills also land around rotations


def payload_for(first_lsn: int, count: int) -> bytes:
    """The payload of the batch [first_lsn, first_lsn + count - 1]: size varies with it."""
    digest = hashlib.blake2b(f"{first_lsn}:{count}".encode()).digest()
    return digest * (1 + first_lsn % 40)


def main(argv: list[str]) -> int:
    from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog

    directory, seed = Path(argv[0]), int(argv[1])
    rng = random.Random(seed)
    wal = WriteAheadLog.open(directory, fsync=FsyncPolicy.ALWAYS, segment_bytes=SEGMENT_BYTES)
    print(f"ready {wal.last_lsn}", flush=True)
    while True:
        count = rng.randint(1, 50)
        first = wal.last_lsn + 1
        appended = wal.append(payload_for(first, count), count)
        print(f"{appended.first_lsn} {appended.last_lsn}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
