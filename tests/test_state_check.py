"""check_store on real LMDB files: a healthy store passes, a damaged one is caught, never fatal.

Every damaged file starts as a real store (``StateStore``, a few batches) broken the way a power
loss or a bad disk can break it: garbage over pages, a short file, zeroed meta pages, a damaged
free-page list, foreign meta content, or no LMDB at all. Some of these kill an in-process LMDB
reader outright (SIGABRT, SIGBUS); a plain reader run in a subprocess proves it, and check_store
must still answer "damaged" with a reason.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import lmdb
import pytest

from kevo_repl.adapters import state_check
from kevo_repl.adapters.state_check import StoreCheck, check_store, quarantine_store
from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.core.errors import StorageError
from kevo_repl.core.ops import OP_DELETE, OP_PUT
from tests.faults.power import garbage_over_pages, store_layout

H = b"H" * 16
REPO = Path(__file__).resolve().parent.parent
# What a node would do without check_store: open the store and read everything in-process.
PLAIN_READER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=False, subdir=False, max_dbs=2)
with env.begin() as txn:
    for name in (b"data", b"meta"):
        for _ in txn.cursor(db=env.open_db(name, txn=txn, create=False)):
            pass
"""
# Found by trying seeds of garbage_in_headers: an in-process reader dies of SIGABRT (LMDB's
# "Assertion 'IS_LEAF(mp)' failed in mdb_cursor_next()"), the checking child of SIGSEGV.
CRASHING_SEED = 36


def build(path: Path, batches: int = 5, per_batch: int = 1000) -> None:
    """A store of ``batches`` put batches, then one batch deleting ten keys."""
    with StateStore.open(path) as store:
        lsn = 0
        for b in range(batches):
            keys = [b"k%015d" % (b * per_batch + i) for i in range(per_batch)]
            store.apply(
                lsn + 1, lsn + per_batch, H, [OP_PUT] * per_batch, keys, [b"v" * 100] * per_batch
            )
            lsn += per_batch
        gone = [b"k%015d" % i for i in range(0, 100, 10)]
        store.apply(lsn + 1, lsn + len(gone), H, [OP_DELETE] * len(gone), gone, [b""] * len(gone))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "state.mdb"
    build(path)
    return path


def garbage_in_headers(path: Path, seed: int, spots: int = 4) -> None:
    """A few random bytes in the first 64 bytes of random pages: headers and node offsets."""
    psize, last = store_layout(path)
    rng = random.Random(seed)
    with path.open("r+b") as f:
        for _ in range(spots):
            f.seek(rng.randint(2, last) * psize + rng.randint(0, 64))
            f.write(rng.randbytes(rng.randint(1, 16)))


def plain_read(path: Path) -> int:
    """Exit status of an ordinary in-process LMDB read of everything (negative: a signal)."""
    proc = subprocess.run([sys.executable, "-c", PLAIN_READER, str(path)], capture_output=True)
    return proc.returncode


def checkers() -> list[int]:
    """PIDs of this process's check children still around, zombies included (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and state_check.CHILD_MODULE.encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_damaged(result: StoreCheck, *words: str) -> None:
    assert not result.ok and result.reason not in ("ok", "absent")
    assert (result.applied_lsn, result.history_id, result.keys) == (0, None, 0)
    for word in words:
        assert word in result.reason


# -- healthy ---------------------------------------------------------------------------------


def test_healthy_store_reports_its_position_and_keys(store: Path) -> None:
    result = check_store(store)
    assert (result.ok, result.reason) == (True, "ok")
    assert (result.applied_lsn, result.history_id, result.keys) == (5010, H, 4990)
    assert 0 < result.elapsed_s < 60
    assert plain_read(store) == 0
    with StateStore.open(store) as reopened:  # the check changed nothing
        assert (reopened.applied_lsn, reopened.key_count) == (5010, 4990)


def test_new_empty_store_is_ok(tmp_path: Path) -> None:
    StateStore.open(tmp_path / "state.mdb").close()
    result = check_store(tmp_path / "state.mdb")
    assert (result.ok, result.applied_lsn, result.history_id, result.keys) == (True, 0, None, 0)


def test_missing_file_is_absent_not_damaged(tmp_path: Path) -> None:
    result = check_store(tmp_path / "nothing.mdb")
    assert (result.ok, result.reason, result.keys) == (True, "absent", 0)


def test_child_prints_one_json_line(store: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", state_check.CHILD_MODULE, str(store)],
        capture_output=True,
        check=True,
        cwd=REPO,
    ).stdout.decode()
    assert out.count("\n") == 1 and '"keys": 4990' in out and '"elapsed_s"' in out


# -- damaged ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_garbage_over_pages_is_damaged(store: Path, seed: int) -> None:
    garbage_over_pages(store, seed)
    assert_damaged(check_store(store))


@pytest.mark.parametrize("seed", range(6))
def test_garbage_in_page_headers_is_damaged(store: Path, seed: int) -> None:
    garbage_in_headers(store, seed)
    assert_damaged(check_store(store))


def test_a_corruption_that_kills_lmdb_readers_is_only_reported(store: Path) -> None:
    garbage_in_headers(store, CRASHING_SEED)
    assert plain_read(store) == -signal.SIGABRT  # in-process, it would have killed the node
    assert_damaged(check_store(store), "check crashed (SIG")  # the child died, not we


def test_a_changed_key_that_lmdb_reads_happily_is_out_of_order(store: Path) -> None:
    content = store.read_bytes()
    assert content.count(b"k000000000002345") == 1
    store.write_bytes(content.replace(b"k000000000002345", b"k000000000009345"))
    assert plain_read(store) == 0
    assert_damaged(check_store(store), "out of order")


def test_file_truncated_to_half_is_damaged(store: Path) -> None:
    psize, last = store_layout(store)
    os.truncate(store, (last + 1) * psize // 2)
    assert plain_read(store) == -signal.SIGBUS  # in-process: killed by a page past the end
    assert_damaged(check_store(store), "last page ends")


def test_both_meta_pages_zeroed_is_damaged(store: Path) -> None:
    psize, _ = store_layout(store)
    with store.open("r+b") as f:
        f.write(bytes(2 * psize))
    assert_damaged(check_store(store), "MDB_INVALID")


def test_damaged_free_page_list_is_caught_though_a_cursor_walk_misses_it(store: Path) -> None:
    """Only the next write reads the free list, so a read-only walk alone never sees it."""
    psize, _ = store_layout(store)
    metas = []
    with store.open("rb") as f:  # MDB_meta after each meta page's 16-byte header
        for page in range(2):
            f.seek(page * psize + 16)
            raw = f.read(136)
            free_root = struct.unpack_from("<Q", raw, 64)[0]  # mm_dbs[FREE_DBI].md_root
            metas.append((struct.unpack_from("<Q", raw, 128)[0], free_root))  # by mm_txnid
    free_root = max(metas)[1]
    assert free_root != 2**64 - 1, "the store should have freed pages"
    with store.open("r+b") as f:
        f.seek(free_root * psize + 16)
        f.write(b"\xff" * 64)
    assert plain_read(store) == 0
    assert_damaged(check_store(store), "MDB_CORRUPTED")


@pytest.mark.parametrize(
    "content", [b"", b"not a database\n" * 100, random.Random(7).randbytes(1 << 20)]
)
def test_a_file_that_is_not_lmdb_is_damaged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.mdb"
    path.write_bytes(content)
    assert_damaged(check_store(path))


def test_a_directory_in_place_of_the_store_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "state.mdb").mkdir()
    assert_damaged(check_store(tmp_path / "state.mdb"), "not a regular file")


def rewrite(path: Path, change, max_dbs: int = 2) -> None:
    """Change a store's content directly through LMDB (no StateStore rules)."""
    env = lmdb.open(str(path), subdir=False, max_dbs=max_dbs, lock=False)
    try:
        with env.begin(write=True) as txn:
            change(env, txn, env.open_db(b"meta", txn=txn))
    finally:
        env.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda env, txn, meta: txn.put(b"applied_lsn", b"\x01" * 4, db=meta), "8"),
        (lambda env, txn, meta: txn.put(b"history_id", b"short", db=meta), "16"),
        (lambda env, txn, meta: txn.put(b"schema", b"2", db=meta), "unexpected keys"),
        (lambda env, txn, meta: txn.delete(b"history_id", db=meta), "together"),
        (lambda env, txn, meta: txn.drop(meta, delete=False), "at applied_lsn 0"),
    ],
    ids=["lsn-size", "history-size", "extra-key", "lsn-alone", "data-without-meta"],
)
def test_foreign_meta_content_is_damaged(store: Path, change, reason: str) -> None:
    rewrite(store, change)
    assert_damaged(check_store(store), reason)


def test_a_foreign_database_is_damaged(store: Path) -> None:
    rewrite(store, lambda env, txn, meta: env.open_db(b"other", txn=txn), max_dbs=3)
    assert_damaged(check_store(store), "main database")


def test_a_hanging_check_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    build(path, batches=20, per_batch=2500)
    took = check_store(path).elapsed_s  # child start-up alone is tens of milliseconds
    result = check_store(path, timeout_s=took / 100)
    assert_damaged(result, "timed out")
    assert result.elapsed_s < took
    assert checkers() == []


# -- quarantine ------------------------------------------------------------------------------


def test_quarantine_moves_store_and_lock_aside(store: Path, monkeypatch) -> None:
    garbage_in_headers(store, CRASHING_SEED)
    digest = hashlib.sha256(store.read_bytes()).digest()
    lock = store.with_name(store.name + "-lock")
    assert lock.exists()
    synced: list[Path] = []
    monkeypatch.setattr(state_check, "fsync_path", synced.append)
    before = datetime.now(UTC).replace(microsecond=0)

    moved = quarantine_store(store)

    assert moved.parent == store.parent and synced == [store.parent]
    stamp = moved.name.removeprefix("state.mdb.damaged-")
    when = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    assert before <= when <= datetime.now(UTC)
    assert not store.exists() and not lock.exists()
    assert moved.with_name(moved.name + "-lock").exists()
    assert hashlib.sha256(moved.read_bytes()).digest() == digest
    assert not check_store(moved).ok  # still there to inspect
    assert check_store(store).reason == "absent"
    with StateStore.open(store) as fresh:
        assert (fresh.applied_lsn, fresh.key_count) == (0, 0)


def test_quarantine_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    moved = []
    for content in (b"first", b"second", b"third"):
        path.write_bytes(content)  # no lock file either: fine
        moved.append(quarantine_store(path))
    assert len(set(moved)) == 3
    assert [m.read_bytes() for m in moved] == [b"first", b"second", b"third"]


def test_quarantine_of_a_missing_store_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="quarantine"):
        quarantine_store(tmp_path / "state.mdb")
