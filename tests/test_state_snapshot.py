"""Snapshots on real LMDB: exactly the state at their LSN while writes go on.

This is what the primary streams to a bootstrapping replica, from its driver thread between
applies, so both the interleaved (one thread) and the concurrent (writer thread) cases are
checked against a replayed model. A snapshot that cannot survive (map growth, close) must
fail loudly rather than return anything else.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kevo_repl.adapters.state_lmdb import MAX_SNAPSHOTS, SnapshotLostError, StateStore
from kevo_repl.adapters.state_snapshot import digest_items
from kevo_repl.core.errors import StorageError
from kevo_repl.core.ops import OP_DELETE, OP_PUT

H = b"H" * 16
BATCH = 16
KEY_SPACE = 400


def batch_for(n: int) -> tuple[int, int, list[int], list[bytes], list[bytes]]:
    """Batch number ``n`` (1-based) of a deterministic workload: puts, overwrites, deletes."""
    first = (n - 1) * BATCH + 1
    ops, keys, values = [], [], []
    for lsn in range(first, first + BATCH):
        ops.append(OP_DELETE if lsn % 7 == 0 else OP_PUT)
        keys.append(b"key-%05d" % (lsn * 7919 % KEY_SPACE))
        values.append(b"" if lsn % 7 == 0 else b"value-%d-" % lsn + b"x" * (lsn % 50))
    return first, first + BATCH - 1, ops, keys, values


def model_at(lsn: int) -> dict[bytes, bytes]:
    assert lsn % BATCH == 0
    model: dict[bytes, bytes] = {}
    for n in range(1, lsn // BATCH + 1):
        _, _, ops, keys, values = batch_for(n)
        for op, key, value in zip(ops, keys, values, strict=True):
            if op == OP_PUT:
                model[key] = value
            else:
                model.pop(key, None)
    return model


def apply_batches(store: StateStore, start: int, count: int) -> None:
    for n in range(start, start + count):
        first, last, ops, keys, values = batch_for(n)
        store.apply(first, last, H, ops, keys, values)


def collect(snapshot, max_bytes: int, between=None) -> dict[bytes, bytes]:
    seen: dict[bytes, bytes] = {}
    previous = b""
    for keys, values in snapshot.chunks(max_bytes):
        assert keys, "no empty chunks"
        assert keys == sorted(keys) and keys[0] > previous, "key order across chunks"
        assert sum(map(len, keys)) + sum(map(len, values)) - len(keys[-1]) - len(values[-1]) < max(
            max_bytes, 1
        ), "a chunk stops at the pair that reaches max_bytes"
        previous = keys[-1]
        seen.update(zip(keys, values, strict=True))
        if between is not None:
            between()
    return seen


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


@pytest.fixture
def store(tmp_path: Path):
    with StateStore.open(tmp_path / "state.mdb") as s:
        yield s


def test_snapshot_interleaved_with_applies_in_one_thread(store: StateStore) -> None:
    apply_batches(store, 1, 40)
    next_batch = iter(range(41, 10_000))
    with store.snapshot() as snap:
        assert (snap.lsn, snap.history_id) == (40 * BATCH, H)
        expected = model_at(snap.lsn)
        assert snap.key_count == len(expected)
        seen = collect(snap, 300, between=lambda: apply_batches(store, next(next_batch), 1))
        assert seen == expected
        assert store.applied_lsn > snap.lsn + 10 * BATCH
        assert snap.digest().sha256 == digest_items(sorted(expected.items()))
    assert store.digest().sha256 == digest_items(sorted(model_at(store.applied_lsn).items()))


def test_snapshot_with_a_concurrent_writer_thread(store: StateStore) -> None:
    apply_batches(store, 1, 30)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        n = 31
        try:
            while not stop.is_set():
                apply_batches(store, n, 1)
                n += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            with store.snapshot() as snap:
                assert snap.lsn % BATCH == 0

                def writer_advances() -> None:
                    target = store.applied_lsn + BATCH
                    wait_until(lambda t=target: store.applied_lsn >= t or bool(errors))

                seen = collect(snap, 500, between=writer_advances)
                assert store.applied_lsn > snap.lsn
                assert seen == model_at(snap.lsn)
                assert snap.digest().sha256 == digest_items(sorted(seen.items()))
    finally:
        stop.set()
        thread.join()
    assert not errors


def test_chunks_resume_after_a_key_and_report_progress(store: StateStore) -> None:
    apply_batches(store, 1, 20)
    with store.snapshot() as snap:
        everything = sorted(model_at(snap.lsn).items())
        first_keys, _ = next(iter(snap.chunks(200)))
        rest = [k for keys, _ in snap.chunks(200, after_key=first_keys[-1]) for k in keys]
        assert first_keys + rest == [k for k, _ in everything]
        middle = b"key-00200x"  # not a stored key: resume from the next one
        assert [k for keys, _ in snap.chunks(10**6, after_key=middle) for k in keys] == [
            k for k, _ in everything if k > middle
        ]
        assert snap.progress(0) == 0.0
        assert snap.progress(snap.key_count // 2) == pytest.approx(0.5, abs=0.01)
        assert snap.progress(snap.key_count + 5) == 1.0
        with pytest.raises(ValueError):
            next(snap.chunks(0))


def test_empty_snapshot(store: StateStore) -> None:
    with store.snapshot() as snap:
        assert (snap.lsn, snap.history_id, snap.key_count) == (0, None, 0)
        assert list(snap.chunks(100)) == []
        assert snap.progress(0) == 1.0


def test_map_growth_loses_an_open_snapshot_loudly(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "state.mdb", map_size_bytes=64 * 1024) as store:
        apply_batches(store, 1, 2)
        snap = store.snapshot()
        chunks = snap.chunks(64)
        next(chunks)
        size = (tmp_path / "state.mdb").stat().st_size
        n = 3
        while (tmp_path / "state.mdb").stat().st_size == size:  # until the map doubles
            apply_batches(store, n, 1)
            n += 1
        with pytest.raises(SnapshotLostError):
            next(chunks)
        with pytest.raises(SnapshotLostError):
            snap.digest()
        snap.close()
        # A new snapshot and the store's own digest (which retries) are fine.
        with store.snapshot() as fresh:
            assert collect(fresh, 500) == model_at(fresh.lsn)
        assert store.digest().sha256 == digest_items(sorted(model_at(store.applied_lsn).items()))


def test_opening_a_snapshot_grows_a_half_full_map_first(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    lsn = 0

    def add_unique_keys(target: StateStore, count: int) -> None:
        nonlocal lsn
        keys = [b"u-%08d" % (lsn + i) for i in range(1, count + 1)]
        target.apply(lsn + 1, lsn + count, H, [OP_PUT] * count, keys, [b"v" * 100] * count)
        lsn += count

    with StateStore.open(path, map_size_bytes=256 * 1024) as store:
        while path.stat().st_size == 256 * 1024:
            add_unique_keys(store, 64)
        grown = path.stat().st_size  # doubled once, by a write: now just over half full
        add_unique_keys(store, 64)
        with store.snapshot() as snap:
            assert path.stat().st_size == 2 * grown  # headroom before the snapshot
            expected = dict(store.scan())
            add_unique_keys(store, 256)  # fits in the headroom: the snapshot survives
            assert path.stat().st_size == 2 * grown
            assert collect(snap, 1000) == expected


def test_close_loses_open_snapshots_and_the_limit_holds(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "state.mdb")
    apply_batches(store, 1, 1)
    snaps = [store.snapshot() for _ in range(MAX_SNAPSHOTS)]
    with pytest.raises(StorageError, match="snapshots already open"):
        store.snapshot()
    snaps.pop().close()
    snaps.append(store.snapshot())
    store.close()
    with pytest.raises(SnapshotLostError):
        next(snaps[0].chunks(100))
    for snap in snaps:
        snap.close()
