"""A SIGKILL at any moment leaves the state store exactly at its ``applied_lsn``.

A child process (``state_crash_child.py``) applies batches, or builds and installs
bootstraps, and reports each completed step; the parent kills it by PID at a random moment
(possibly inside a commit, a map growth or a bootstrap install), reopens the store and checks
that the data is exactly batches ``1..applied_lsn`` (or exactly bootstrap version
``applied_lsn``), and that nothing reported as done was lost.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kevo_repl.adapters.state_lmdb import StateStore
from tests.state_crash_child import BATCH, apply_model, bootstrap_content

CHILD = Path(__file__).with_name("state_crash_child.py")
REPO = Path(__file__).resolve().parent.parent


def _lines(buffer: bytes) -> list[int]:
    return [int(line) for line in buffer.split(b"\n")[:-1] if line.strip()]


def run_and_kill(mode: str, path: Path, rng: random.Random) -> int:
    """Start the child, let it report a random number of steps, SIGKILL it; last step seen."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    buffer = b""
    try:
        wanted = rng.randint(1, 25)
        deadline = time.monotonic() + 20
        while len(_lines(buffer)) < wanted:
            assert time.monotonic() < deadline, "child made no progress"
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    pytest.fail(f"child exited early: {proc.stderr.read().decode()}")
                buffer += data
        time.sleep(rng.uniform(0, 0.01))  # the random moment of the crash, not a wait
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        buffer += proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return max(_lines(buffer))


def test_sigkill_during_applies_keeps_data_and_applied_lsn_consistent(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(8):
        reported = run_and_kill("apply", path, rng)
        with StateStore.open(path) as store:
            lsn = store.applied_lsn
            assert lsn >= reported, "a committed batch was lost"
            assert lsn % BATCH == 0, "half a batch applied"
            assert store.scan() == sorted(apply_model(lsn).items())


def test_sigkill_during_bootstrap_install_leaves_old_or_new_store(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(5):
        reported = run_and_kill("bootstrap", path, rng)
        with StateStore.open(path) as store:
            version = store.applied_lsn
            assert version >= reported
            assert not (tmp_path / "state.mdb.bootstrap").exists()
            assert store.scan() == sorted(bootstrap_content(version).items())
