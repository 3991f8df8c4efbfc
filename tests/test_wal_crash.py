"""SIGKILL a real writer process at random moments: every acknowledged batch survives.

The child (tests/wal_writer_child.py) prints each LSN range after ``append`` returned with
fsync=always. After each kill the log is reopened: every printed batch must be there, intact
and in order, and every record at all must carry the payload derived from its LSNs (nothing
invented, nothing half-written). Kill delays come from a seeded random, so a failing round
can be replayed.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kevo_repl.adapters.wal_files import WriteAheadLog
from kevo_repl.core.record import decode_record
from tests.wal_writer_child import payload_for

CHILD = Path(__file__).with_name("wal_writer_child.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20240611
ROUNDS = 6


def run_and_kill(directory: Path, seed: int, kill_after_s: float) -> list[tuple[int, int]]:
    """Start the writer, let it append for ``kill_after_s`` once ready, SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready") or len(lines) > 1:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not ready.wait(0.01):
            assert proc.poll() is None, f"writer exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "writer never became ready"
        time.sleep(kill_after_s)  # the random kill moment, not a wait for a condition
    finally:
        proc.kill()  # SIGKILL, by PID
        proc.wait(timeout=10)
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    acked = []
    for line in lines[1:]:
        if line.endswith("\n"):  # a line cut by the kill was never fully printed
            first, last = line.split()
            acked.append((int(first), int(last)))
    return acked


def test_sigkilled_writer_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    acked: list[tuple[int, int]] = []
    for round_ in range(ROUNDS):
        acked += run_and_kill(tmp_path, rng.randrange(1 << 30), rng.uniform(0.0, 0.15))
        with WriteAheadLog.open(tmp_path) as wal:
            stored = []
            for record in wal.read_from(1):
                decoded = decode_record(record)
                count = decoded.count
                assert bytes(decoded.payload) == payload_for(decoded.first_lsn, count), round_
                stored.append((decoded.first_lsn, decoded.last_lsn))
            report = wal.recovery
        assert stored == sorted(stored) and all(
            b[0] == a[1] + 1 for a, b in itertools.pairwise(stored)
        )
        assert stored[: len(acked)] == acked, f"round {round_}: acknowledged batch lost"
        allowed = ("torn tail", "unfinished segment creation")  # never "corrupt"
        assert all(d.reason.startswith(allowed) for d in report.dropped), report
        acked = stored  # recovered batches beyond the last ack are part of the log now
    assert len(acked) > ROUNDS  # the kills did land among real appends
