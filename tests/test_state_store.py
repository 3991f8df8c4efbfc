"""State store on real LMDB: apply guards, typed errors, growth, reads, digests.

The store is the replica's exactly-once guard: ``applied_lsn`` and the data commit together,
an already-applied batch is a no-op and anything out of order or of another history is
refused without touching the store. Every test here checks "nothing changed" by digest.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.state_snapshot import digest_items
from kevo_repl.core.errors import (
    HistoryMismatchError,
    LsnGapError,
    ProtocolError,
    StorageError,
)
from kevo_repl.core.ops import OP_DELETE, OP_PUT

H = b"H" * 16
OTHER = b"O" * 16


def puts(first: int, pairs: list[tuple[bytes, bytes]]):
    """A batch of puts as ``apply_many`` takes it."""
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    return first, first + len(pairs) - 1, [OP_PUT] * len(pairs), keys, values


def apply_puts(store: StateStore, first: int, pairs: list[tuple[bytes, bytes]]) -> bool:
    first, last, ops, keys, values = puts(first, pairs)
    return store.apply(first, last, H, ops, keys, values)


@pytest.fixture
def store(tmp_path: Path):
    with StateStore.open(tmp_path / "state.mdb") as s:
        yield s


def test_empty_store(store: StateStore) -> None:
    assert (store.applied_lsn, store.durable_lsn, store.history_id, store.key_count) == (
        0,
        0,
        None,
        0,
    )
    assert store.get(b"a") is None
    assert store.read(b"a") == (None, 0)
    assert store.scan() == []
    assert store.digest().lsn == 0
    assert store.digest().sha256 == digest_items([])


def test_reapplying_a_batch_is_a_noop(store: StateStore) -> None:
    assert apply_puts(store, 1, [(b"a", b"1"), (b"b", b"2")])
    before = store.digest()
    # Same LSNs, other content: the LSN guard alone decides, so nothing changes.
    first, last, ops, keys, _ = puts(1, [(b"a", b"X"), (b"b", b"Y")])
    assert store.apply(first, last, H, ops, keys, [b"X", b"Y"]) is False
    assert store.apply(2, 2, H, [OP_DELETE], [b"a"], [b""]) is False
    assert store.digest() == before
    assert store.applied_lsn == 2


def test_gap_and_overlap_raise_and_change_nothing(store: StateStore) -> None:
    store.apply(1, 2, H, [OP_PUT, OP_PUT], [b"a", b"b"], [b"1", b"2"])
    before = store.digest()
    with pytest.raises(LsnGapError) as info:
        store.apply(4, 4, H, [OP_PUT], [b"c"], [b"3"])
    assert (info.value.expected_lsn, info.value.got_lsn) == (3, 4)
    with pytest.raises(LsnGapError):
        store.apply(2, 3, H, [OP_PUT, OP_PUT], [b"c", b"d"], [b"3", b"4"])
    assert store.digest() == before
    assert store.apply(3, 3, H, [OP_PUT], [b"c"], [b"3"])


def test_history_is_adopted_then_enforced(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    with StateStore.open(path) as store:
        store.apply(1, 1, H, [OP_PUT], [b"a"], [b"1"])
        assert store.history_id == H
        with pytest.raises(HistoryMismatchError):
            store.apply(2, 2, OTHER, [OP_PUT], [b"b"], [b"2"])
        with pytest.raises(HistoryMismatchError):  # even an "already applied" one
            store.apply(1, 1, OTHER, [OP_PUT], [b"a"], [b"1"])
        with pytest.raises(HistoryMismatchError):
            store.apply_many([(2, 2, [OP_PUT], [b"b"], [b"2"])], OTHER)
    with StateStore.open(path) as store:
        assert (store.history_id, store.applied_lsn, store.get(b"a")) == (H, 1, b"1")
        with pytest.raises(HistoryMismatchError):
            store.apply(2, 2, OTHER, [OP_PUT], [b"b"], [b"2"])


@pytest.mark.parametrize(
    ("first", "last", "history", "ops", "keys", "values"),
    [
        (1, 2, H, [OP_PUT], [b"a", b"b"], [b"1", b"2"]),  # ragged ops
        (1, 2, H, [OP_PUT, OP_PUT], [b"a", b"b"], [b"1"]),  # ragged values
        (1, 3, H, [OP_PUT, OP_PUT], [b"a", b"b"], [b"1", b"2"]),  # range vs entries
        (0, 0, H, [OP_PUT], [b"a"], [b"1"]),  # LSNs start at 1
        (1, 0, H, [], [], []),  # empty batch
        (1, 1, H, [7], [b"a"], [b"1"]),  # unknown op
        (1, 1, b"", [OP_PUT], [b"a"], [b"1"]),  # no history
        (1, 1, H, [OP_PUT], [b""], [b"1"]),  # empty key
        (1, 1, H, [OP_PUT], [b"k" * 512], [b"1"]),  # over LMDB's key limit
        (1, 2, H, [OP_PUT, OP_DELETE], [b"a", b""], [b"1", b""]),  # empty key, mixed path
    ],
)
def test_malformed_batches_raise_protocol_error(
    store: StateStore, first, last, history, ops, keys, values
) -> None:
    with pytest.raises(ProtocolError):
        store.apply(first, last, history, ops, keys, values)
    assert (store.applied_lsn, store.history_id, store.key_count) == (0, None, 0)


def test_max_key_bytes_is_lmdbs_limit(store: StateStore) -> None:
    key = b"k" * store.max_key_bytes
    assert store.apply(1, 1, H, [OP_PUT], [key], [b"v"])
    assert store.get(key) == b"v"


def test_mixed_ops_apply_in_order_and_absent_deletes_are_fine(store: StateStore) -> None:
    ops = [OP_PUT, OP_DELETE, OP_PUT, OP_DELETE, OP_PUT, OP_PUT]
    keys = [b"a", b"a", b"b", b"zz", b"c", b"b"]
    values = [b"1", b"", b"2", b"", b"3", b"4"]
    assert store.apply(1, 6, H, ops, keys, values)
    assert store.scan() == [(b"b", b"4"), (b"c", b"3")]
    assert store.read(b"b") == (b"4", 6)


def test_apply_many_skips_applied_and_is_all_or_nothing(store: StateStore) -> None:
    store.apply(1, 1, H, [OP_PUT], [b"a"], [b"1"])
    batches = [
        (1, 1, [OP_PUT], [b"a"], [b"stale"]),
        (2, 3, [OP_PUT, OP_PUT], [b"b", b"c"], [b"2", b"3"]),
        (4, 4, [OP_DELETE], [b"a"], [b""]),
    ]
    assert store.apply_many(batches, H) == 4
    assert store.scan() == [(b"b", b"2"), (b"c", b"3")]
    assert store.apply_many(batches, H) == 4  # all applied already: no-op
    before = store.digest()
    with pytest.raises(LsnGapError):
        store.apply_many([(5, 5, [OP_PUT], [b"d"], [b"4"]), (7, 7, [OP_PUT], [b"e"], [b"5"])], H)
    with pytest.raises(ProtocolError):
        store.apply_many([(5, 5, [OP_PUT], [b"d"], [b"4"]), (6, 6, [OP_PUT], [b""], [b"5"])], H)
    assert store.digest() == before
    assert store.apply_many([], H) == 4


def test_map_grows_from_a_tiny_map(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    lsn = 0
    with StateStore.open(path, map_size_bytes=64 * 1024) as store:
        for _ in range(40):
            pairs = [(rng.randbytes(16), rng.randbytes(100)) for _ in range(256)]
            apply_puts(store, lsn + 1, pairs)
            model.update(pairs)
            lsn += 256
        assert store.key_count == len(model)
        assert path.stat().st_size > 1024 * 1024  # grew by doubling, many times
        # One batch larger than the whole current map also fits.
        big = [(rng.randbytes(16), rng.randbytes(1000)) for _ in range(3000)]
        store.apply_many([puts(lsn + 1, big)], H)
        model.update(big)
        lsn += len(big)
    with StateStore.open(path, map_size_bytes=64 * 1024) as store:  # smaller than the file
        assert store.applied_lsn == lsn
        assert store.digest().sha256 == digest_items(sorted(model.items()))
        store.apply(lsn + 1, lsn + 1, H, [OP_PUT], [b"after-reopen"], [b"x" * 2000])
        assert store.get(b"after-reopen") == b"x" * 2000


def test_scan_ordering_and_bounds(store: StateStore) -> None:
    rng = random.Random(3)
    keys = sorted({rng.randbytes(rng.randint(1, 6)) for _ in range(300)})
    shuffled = keys[:]
    rng.shuffle(shuffled)
    apply_puts(store, 1, [(k, k[::-1]) for k in shuffled])
    everything = [(k, k[::-1]) for k in keys]
    assert store.scan() == everything
    lo, hi = keys[50], keys[120]
    assert store.scan(lo, hi) == everything[50:120]  # start inclusive, end exclusive
    assert store.scan(lo, hi, limit=5) == everything[50:55]
    assert store.scan(lo + b"\x00") == everything[51:]  # start between keys
    assert store.scan(end=keys[0]) == []
    assert store.scan(hi, lo) == []
    assert store.scan(limit=0) == []
    assert store.scan(keys[-1] + b"\xff") == []


def test_checkpoint_and_durable_lsn(tmp_path: Path) -> None:
    path = tmp_path / "state.mdb"
    with StateStore.open(path) as store:
        store.apply(1, 2, H, [OP_PUT, OP_PUT], [b"a", b"b"], [b"1", b"2"])
        assert (store.applied_lsn, store.durable_lsn) == (2, 0)
        assert store.checkpoint() == 2
        store.apply(3, 3, H, [OP_PUT], [b"c"], [b"3"])
        assert store.durable_lsn == 2
    with StateStore.open(path) as store:  # open syncs what it finds
        assert (store.applied_lsn, store.durable_lsn) == (3, 3)
    with StateStore.open(tmp_path / "synced.mdb", sync_commits=True) as store:
        store.apply(1, 1, H, [OP_PUT], [b"a"], [b"1"])
        assert store.durable_lsn == 1


def test_closed_store_and_bad_paths_raise_storage_error(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "state.mdb")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError):
        store.get(b"a")
    with pytest.raises(StorageError):
        store.apply(1, 1, H, [OP_PUT], [b"a"], [b"1"])
    with pytest.raises(StorageError, match="missing"):
        StateStore.open(tmp_path / "missing" / "state.mdb")
    (tmp_path / "dir.mdb").mkdir()
    with pytest.raises(StorageError, match=r"dir\.mdb"):
        StateStore.open(tmp_path / "dir.mdb")


# -- equal content gives an equal digest, whatever the batching and order --------------------

KEYS = st.binary(min_size=1, max_size=3)
ENTRY = st.tuples(st.sampled_from([OP_PUT, OP_DELETE]), KEYS, st.binary(max_size=8))


def _apply_in_batches(store: StateStore, entries, cuts: list[int], many: bool) -> None:
    bounds = sorted({0, len(entries), *(c % (len(entries) + 1) for c in cuts)})
    batches = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = entries[lo:hi]
        batches.append(
            (lo + 1, hi, [e[0] for e in chunk], [e[1] for e in chunk], [e[2] for e in chunk])
        )
    if many:
        store.apply_many(batches, H)
    else:
        for batch in batches:
            store.apply(batch[0], batch[1], H, *batch[2:])


@settings(max_examples=25, deadline=None)
@given(
    entries=st.lists(ENTRY, min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_digest_depends_only_on_content(entries, cuts, seed) -> None:
    model: dict[bytes, bytes] = {}
    for op, key, value in entries:
        if op == OP_PUT:
            model[key] = value
        else:
            model.pop(key, None)
    expected = digest_items(sorted(model.items()))
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        with StateStore.open(Path(tmp) / "a.mdb", map_size_bytes=64 * 1024) as a:
            _apply_in_batches(a, entries, cuts, many=rng.random() < 0.5)
            digest_a = a.digest()
            assert a.scan() == sorted(model.items())
        # Same content, other history of writes: final puts shuffled, plus deletes of
        # absent keys, in another batching.
        final = [(OP_PUT, k, v) for k, v in model.items()]
        final += [(OP_DELETE, os.urandom(4) + b"\xff", b"") for _ in range(3)]
        rng.shuffle(final)
        with StateStore.open(Path(tmp) / "b.mdb") as b:
            _apply_in_batches(b, final, [rng.randrange(100) for _ in range(3)], many=True)
            digest_b = b.digest()
    assert digest_a.sha256 == digest_b.sha256 == expected
    assert digest_a.keys == digest_b.keys == len(model)
    assert digest_a.lsn == len(entries)
