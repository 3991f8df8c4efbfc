"""Bootstrap into a fresh store on real LMDB: ordered appends, atomic install, no leftovers.

A replica that is too far behind receives the primary's snapshot in key-ordered chunks, builds
``<store>.bootstrap`` beside its live store and swaps it in with one rename. An unfinished
bootstrap must never become live: ``open`` deletes a leftover and install refuses one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.state_snapshot import digest_items
from kevo_repl.core.errors import HistoryMismatchError, ProtocolError, StorageError
from kevo_repl.core.ops import OP_PUT

OLD = b"O" * 16
NEW = b"N" * 16


def live_store(path: Path) -> StateStore:
    store = StateStore.open(path)
    store.apply(1, 2, OLD, [OP_PUT, OP_PUT], [b"old-a", b"old-b"], [b"1", b"2"])
    return store


def pairs(count: int, prefix: bytes = b"k") -> list[tuple[bytes, bytes]]:
    return [(prefix + b"%06d" % i, b"value-%d" % i) for i in range(count)]


def add_in_chunks(writer, items: list[tuple[bytes, bytes]], size: int) -> None:
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        writer.add([k for k, _ in chunk], [v for _, v in chunk])


def test_bootstrap_replaces_the_live_store(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    items = pairs(1000)
    with live_store(path) as store:
        with StateStore.begin_bootstrap(path) as writer:
            add_in_chunks(writer, items, 97)
            assert writer.keys_added == 1000
            writer.finish(500, NEW)
        assert store.get(b"old-a") == b"1"  # untouched until the install
        store.replace_with_bootstrap()
        assert (store.applied_lsn, store.durable_lsn, store.history_id) == (500, 500, NEW)
        assert store.scan() == items
        assert store.digest().sha256 == digest_items(items)
        assert store.apply(501, 501, NEW, [OP_PUT], [b"after"], [b"x"])
        with pytest.raises(HistoryMismatchError):
            store.apply(502, 502, OLD, [OP_PUT], [b"after"], [b"x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.mdb", "state.mdb-lock"]
    with StateStore.open(path) as store:
        assert (store.applied_lsn, store.key_count) == (501, 1001)


def test_snapshot_to_bootstrap_round_trip(tmp_path: Path) -> None:
    items = pairs(3000)
    with StateStore.open(tmp_path / "primary.mdb") as primary:
        primary.apply(1, 3000, NEW, [OP_PUT] * 3000, [k for k, _ in items], [v for _, v in items])
        replica_path = tmp_path / "replica.mdb"
        with StateStore.open(replica_path) as replica, primary.snapshot() as snap:
            writer = StateStore.begin_bootstrap(replica_path, map_size_bytes=64 * 1024)
            for keys, values in snap.chunks(4096):  # also grows the bootstrap's tiny map
                writer.add(keys, values)
            writer.finish(snap.lsn, NEW)
            replica.replace_with_bootstrap()
            assert replica.digest() == primary.digest()


@pytest.mark.parametrize(
    "chunks",
    [
        [[b"b", b"a"]],  # within a chunk
        [[b"a", b"c"], [b"b"]],  # across chunks
        [[b"a", b"b"], [b"b"]],  # a repeated key
        [[b"a"], [b""]],  # empty key
    ],
)
def test_out_of_order_chunks_are_refused(tmp_path: Path, chunks: list[list[bytes]]) -> None:
    with StateStore.begin_bootstrap(tmp_path / "state.mdb") as writer:
        with pytest.raises(ProtocolError):
            for keys in chunks:
                writer.add(keys, [b"v"] * len(keys))
        writer.add([b"zz"], [b"after"])  # the refused chunk left nothing behind
        assert writer.keys_added == sum(map(len, chunks[:-1])) + 1


def test_ragged_chunk_and_bad_finish_are_refused(tmp_path: Path) -> None:
    with StateStore.begin_bootstrap(tmp_path / "state.mdb") as writer:
        with pytest.raises(ProtocolError):
            writer.add([b"a", b"b"], [b"1"])
        with pytest.raises(ProtocolError):
            writer.finish(5, b"")
        writer.add([], [])
        writer.finish(0, NEW)  # an empty primary is a valid snapshot
        with pytest.raises(StorageError):
            writer.add([b"a"], [b"1"])


def test_leftover_bootstrap_is_discarded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    live_store(path).close()
    # An unfinished bootstrap as a crash leaves it: chunks written, no finish().
    writer = StateStore.begin_bootstrap(path, map_size_bytes=256 * 1024)
    add_in_chunks(writer, pairs(200), 50)
    shutil.copyfile(writer.path, tmp_path / "unfinished")
    writer.abort()
    assert not writer.path.exists()
    (tmp_path / "unfinished").rename(writer.path)
    with StateStore.open(path) as store:
        assert not writer.path.exists()
        assert (store.applied_lsn, store.history_id) == (2, OLD)
        assert store.scan() == [(b"old-a", b"1"), (b"old-b", b"2")]


def test_install_refuses_an_unfinished_or_missing_bootstrap(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    with live_store(path) as store:
        with pytest.raises(StorageError, match="no bootstrap"):
            store.replace_with_bootstrap()
        writer = StateStore.begin_bootstrap(path, map_size_bytes=256 * 1024)
        add_in_chunks(writer, pairs(10), 5)
        shutil.copyfile(writer.path, tmp_path / "unfinished")
        writer.abort()
        (tmp_path / "unfinished").rename(writer.path)
        with pytest.raises(StorageError, match="not finished"):
            store.replace_with_bootstrap()
        assert (store.applied_lsn, store.get(b"old-a")) == (2, b"1")


def test_begin_removes_a_stale_bootstrap_and_abort_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    with StateStore.begin_bootstrap(path) as first:
        add_in_chunks(first, pairs(10, b"stale"), 10)
        first.finish(10, OLD)
    assert first.path.exists()
    with StateStore.begin_bootstrap(path) as second:
        second.add([b"fresh"], [b"1"])
        second.finish(1, NEW)
    with live_store(path) as store:  # opening discards the unused finished file too
        assert not second.path.exists()
        writer = StateStore.begin_bootstrap(path)
        writer.add([b"fresh"], [b"1"])
        writer.finish(1, NEW)
        store.replace_with_bootstrap()
        assert store.scan() == [(b"fresh", b"1")]
    with StateStore.begin_bootstrap(path) as aborted:
        aborted.add([b"x"], [b"1"])  # leaving the block without finish() aborts
    assert not aborted.path.exists()


def test_install_refused_while_snapshots_are_open(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    with live_store(path) as store:
        with StateStore.begin_bootstrap(path) as writer:
            writer.finish(9, NEW)
        with store.snapshot(), pytest.raises(StorageError, match="snapshots open"):
            store.replace_with_bootstrap()
        store.replace_with_bootstrap()
        assert store.applied_lsn == 9
