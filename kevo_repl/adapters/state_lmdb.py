"""The LMDB state store: a node's key-value data, ``applied_lsn`` and history id.

Every apply writes the data, ``applied_lsn`` and the history id in ONE write transaction, so
a crash can never leave a batch applied twice or in part: after any crash the data is exactly
batches ``1..applied_lsn``. An already-applied batch is a no-op and a gap is refused.

Durability: commits do not sync (DESIGN section 9: the WAL is the durability point). A process
crash loses nothing (committed pages live in the shared file mapping); an OS crash or power
loss may lose, and with writemap + no sync even corrupt, what was committed since the last
:meth:`StateStore.checkpoint`. Hence ``durable_lsn`` apart from ``applied_lsn``; recovering
from such a loss (WAL replay, a new bootstrap) is the caller's job. ``sync_commits=True``
trades the speed for a sync per commit.

Threads: one writer at a time (a lock); reads from any thread. Growing the map aborts every
open read transaction in py-lmdb, so short reads hold a shared gate the resize takes alone,
and a long-lived snapshot open during a resize is lost (``SnapshotLostError``). To make that
rare the map is doubled ahead of time, when a snapshot opens on a map more than half used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

import lmdb

from kevo_repl.adapters.state_batches import Batch, plan_batches
from kevo_repl.adapters.state_bootstrap import BootstrapWriter, check_finished
from kevo_repl.adapters.state_format import (
    LOCK_SUFFIX,
    ReadGate,
    bootstrap_path,
    discard_bootstrap,
    fsync_path,
    grow_map,
    open_env,
    read_meta,
    release_mapped_pages,
    storage_error,
    unlink_quietly,
    write_meta,
    write_txn,
)
from kevo_repl.adapters.state_reads import read_one, read_prefix, scan_range
from kevo_repl.adapters.state_snapshot import SnapshotLostError, StoreDigest, StoreSnapshot
from kevo_repl.core.errors import HistoryMismatchError, ProtocolError, StorageError
from kevo_repl.core.ops import OP_PUT

__all__ = [
    "DEFAULT_MAP_BYTES",
    "MAX_SNAPSHOTS",
    "Batch",
    "BootstrapWriter",
    "SnapshotLostError",
    "StateStore",
    "StoreDigest",
    "StoreSnapshot",
]

DEFAULT_MAP_BYTES: Final = 64 * 1024 * 1024
MAX_SNAPSHOTS: Final = 64  # of the 126 reader slots; the rest serve short reads


class StateStore:
    """A node's LMDB state store. Open with :meth:`open`; a context manager."""

    def __init__(self, path: Path, map_size_bytes: int, sync_commits: bool) -> None:
        self._path = path
        self._map_size_bytes = map_size_bytes
        self._sync_commits = sync_commits
        self._write_lock = threading.Lock()
        self._gate = ReadGate()
        self._snapshots: set[StoreSnapshot] = set()
        self._env: lmdb.Environment | None = None
        self._open_env()

    @classmethod
    def open(
        cls, path: Path, *, map_size_bytes: int = DEFAULT_MAP_BYTES, sync_commits: bool = False
    ) -> StateStore:
        """Open or create the store file at ``path``, discarding any leftover bootstrap."""
        path = Path(path)
        discard_bootstrap(path)
        return cls(path, map_size_bytes, sync_commits)

    @staticmethod
    def begin_bootstrap(
        live_path: Path, *, map_size_bytes: int = DEFAULT_MAP_BYTES
    ) -> BootstrapWriter:
        """Start building a fresh store beside ``live_path`` (a stale one is removed first)."""
        return BootstrapWriter(Path(live_path), map_size_bytes)

    def _open_env(self) -> None:
        env, self._data, self._meta = open_env(
            self._path, self._map_size_bytes, sync=self._sync_commits
        )
        try:
            with env.begin() as txn:
                self._applied_lsn, self._history_id = read_meta(txn, self._meta)
            env.sync(True)  # whatever a previous process left in the page cache is now durable
        except lmdb.Error as exc:
            env.close()
            raise storage_error(self._path, "open", exc) from exc
        self._env = env
        self._durable_lsn = self._applied_lsn

    # -- state ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def history_id(self) -> bytes | None:
        return self._history_id

    @property
    def applied_lsn(self) -> int:
        """Last LSN whose batch is visible in the store (0 when empty)."""
        return self._applied_lsn

    @property
    def durable_lsn(self) -> int:
        """Applied LSN as of the last checkpoint (or the last commit with ``sync_commits``)."""
        return self._durable_lsn

    def release_pages(self) -> int:
        """Drop the store's pages from this process's RSS (they stay in the page cache)."""
        return release_mapped_pages(self._path)

    @property
    def key_count(self) -> int:
        with self._reading("stat") as txn:
            return txn.stat(self._data)["entries"]

    @property
    def max_key_bytes(self) -> int:
        """Longest key LMDB accepts (511 bytes in its default build)."""
        return self._require_env().max_key_size()

    # -- writes -----------------------------------------------------------------------------

    def apply(
        self,
        first_lsn: int,
        last_lsn: int,
        history_id: bytes,
        ops: Sequence[int],
        keys: Sequence[bytes],
        values: Sequence[bytes],
    ) -> bool:
        """Apply one batch atomically; False (nothing changed) if it was already applied.

        Raises ``LsnGapError`` unless ``first_lsn == applied_lsn + 1``, ``HistoryMismatchError``
        for another history, ``ProtocolError`` for a malformed batch.
        """
        with self._write_lock:
            before = self._applied_lsn
            return self._commit(((first_lsn, last_lsn, ops, keys, values),), history_id) != before

    def apply_many(
        self,
        batches: Sequence[Batch],
        history_id: bytes,
        *,
        new_history: bool = False,
        absent: list[int] | None = None,
    ) -> int:
        """Apply consecutive batches in one transaction (coalescing under load).

        ``new_history``: the batches start ``history_id``, a history that forked from the
        store's (the caller checked it against its chain); otherwise another history than
        the store's is refused.

        Already-applied batches are skipped; any error leaves the store unchanged. Returns the
        new ``applied_lsn``. ``absent`` collects the LSN of every delete that found no key
        (what Redis's ``DEL`` counts), for the writer's reply.
        """
        with self._write_lock:
            return self._commit(batches, history_id, new_history, absent)

    def _commit(
        self,
        batches: Sequence[Batch],
        history_id: bytes,
        switch: bool = False,
        absent: list[int] | None = None,
    ) -> int:
        env = self._require_env()
        if not history_id:
            raise ProtocolError("batch without a history id")
        if self._history_id not in (None, history_id) and not switch:
            raise HistoryMismatchError(
                f"state store {self._path} holds history {self._history_id.hex()}, "
                f"batch is of history {history_id.hex()}"
            )
        pending = plan_batches(batches, self._applied_lsn)
        if not pending:
            return self._applied_lsn
        new_lsn = pending[-1][0]
        new_history = history_id if history_id != self._history_id else None
        data, meta = self._data, self._meta

        def body(txn: lmdb.Transaction[bytes]) -> None:
            cursor = txn.cursor(db=data)
            missed: list[int] = []
            for last, puts_only, ops, keys, values in pending:
                if puts_only:
                    cursor.putmulti(zip(keys, values, strict=True))
                    continue
                lsn = last - len(keys)
                for op, key, value in zip(ops, keys, values, strict=True):
                    lsn += 1
                    if op == OP_PUT:
                        txn.put(key, value, db=data)
                    elif not txn.delete(key, db=data):
                        missed.append(lsn)
            if absent is not None:  # the body may run again (a map resize): set, not append
                absent[:] = missed
            write_meta(txn, meta, new_lsn, new_history)

        try:
            write_txn(env, body, self._grow)
        except lmdb.BadValsizeError as exc:
            raise ProtocolError(f"empty key or key over {env.max_key_size()} bytes") from exc
        except (lmdb.Error, OSError) as exc:
            raise storage_error(self._path, "apply", exc) from exc
        self._applied_lsn = new_lsn
        if new_history is not None:
            self._history_id = new_history
        if self._sync_commits:
            self._durable_lsn = new_lsn
        return new_lsn

    def _grow(self) -> None:
        """Double the map. Call with the write lock held and no write transaction open."""
        env = self._require_env()
        with self._gate.exclusive():
            for snapshot in self._snapshots:
                snapshot.invalidate("the map grew (set_mapsize ends every read transaction)")
            self._snapshots.clear()
            grow_map(env, self._path)

    def checkpoint(self) -> int:
        """Flush everything committed to disk; returns the new ``durable_lsn``."""
        self._gate.enter()  # a bootstrap install (exclusive) cannot swap the file under us
        try:
            env = self._require_env()
            lsn = self._applied_lsn  # read before the sync: every commit up to it gets flushed
            env.sync(True)
            self._durable_lsn = max(self._durable_lsn, lsn)
            return self._durable_lsn
        except lmdb.Error as exc:
            raise storage_error(self._path, "checkpoint", exc) from exc
        finally:
            self._gate.leave()

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self.read(key)[0]

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        """The value of ``key`` and the ``applied_lsn`` it reflects, from one read transaction."""
        with self._reading("read") as txn:
            return read_one(txn, self._data, self._meta, key)

    def read_many(self, keys: Sequence[bytes], max_bytes: int) -> tuple[list[bytes | None], int]:
        """Values of a prefix of ``keys`` (None: absent) from one read transaction, stopping
        before ``max_bytes`` of values (at least one), and the ``applied_lsn`` they reflect."""
        with self._reading("read") as txn:
            return read_prefix(txn, self._data, self._meta, keys, max_bytes)

    @contextmanager
    def _reading(self, what: str) -> Iterator[lmdb.Transaction[bytes]]:
        """A short read transaction under the shared gate (a resize waits for it)."""
        env = self._require_env()
        self._gate.enter()
        try:
            with env.begin() as txn:
                yield txn
        except lmdb.Error as exc:
            raise storage_error(self._path, what, exc) from exc
        finally:
            self._gate.leave()

    def rewind(
        self, puts: Sequence[tuple[bytes, bytes | None]], lsn: int, history_id: bytes
    ) -> None:
        """In one transaction: set these keys (None: delete them) and ``applied_lsn`` back to
        ``lsn`` of ``history_id`` (a diverged tail replaced: ``core/rewind.py``)."""
        env = self._require_env()
        data, meta = self._data, self._meta

        def body(txn: lmdb.Transaction[bytes]) -> None:
            for key, value in puts:
                if value is None:
                    txn.delete(key, db=data)
                else:
                    txn.put(key, value, db=data)
            write_meta(txn, meta, lsn, history_id or None)

        with self._write_lock:
            try:
                write_txn(env, body, self._grow)
            except (lmdb.Error, OSError) as exc:
                raise storage_error(self._path, "rewind", exc) from exc
            self._applied_lsn = lsn
            self._history_id = history_id or self._history_id
            self._durable_lsn = min(self._durable_lsn, lsn)

    def scan(
        self, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order, at most ``limit`` of them."""
        with self._reading("scan") as txn:
            return scan_range(txn, self._data, start, end, limit)

    def snapshot(self) -> StoreSnapshot:
        """A consistent view at the current ``applied_lsn``; close it when done."""
        with self._write_lock:
            env = self._require_env()
            if len(self._snapshots) >= MAX_SNAPSHOTS:
                raise StorageError(
                    f"state store {self._path}: {MAX_SNAPSHOTS} snapshots already open"
                )
            if not self._snapshots and self._more_than_half_used(env):
                self._grow()  # headroom now, so writes during this snapshot need not resize
            snapshot = StoreSnapshot(
                env, self._data, self._meta, self._gate, self._path, self._forget
            )
            self._snapshots.add(snapshot)
            return snapshot

    def _forget(self, snapshot: StoreSnapshot) -> None:
        with self._write_lock:  # the set is walked by _grow and close under this lock
            self._snapshots.discard(snapshot)

    def _more_than_half_used(self, env: lmdb.Environment) -> bool:
        try:
            info = env.info()
            return (info["last_pgno"] + 1) * env.stat()["psize"] * 2 > info["map_size"]
        except lmdb.Error as exc:
            raise storage_error(self._path, "info", exc) from exc

    def digest(self) -> StoreDigest:
        """Digest of the whole store with the LSN it reflects (retried if the map grows)."""
        while True:
            try:
                with self.snapshot() as snapshot:
                    return snapshot.digest()
            except SnapshotLostError:
                continue

    # -- bootstrap install and lifecycle ------------------------------------------------------

    def replace_with_bootstrap(self) -> None:
        """Swap in the finished ``<path>.bootstrap`` atomically and reopen on it.

        The bootstrap file was synced by ``finish()``; ``os.rename`` replaces the live file in
        one step and the directory fsync makes the rename durable, so a crash at any point
        leaves the old complete store or the new complete store.
        """
        source = bootstrap_path(self._path)
        with self._write_lock, self._gate.exclusive():
            env = self._require_env()
            if self._snapshots:
                raise StorageError(f"state store {self._path}: snapshots open, cannot replace it")
            check_finished(source)
            env.close()
            self._env = None
            try:
                os.rename(source, self._path)
            except OSError as exc:
                self._open_env()
                raise storage_error(self._path, "install bootstrap", exc) from exc
            try:
                # The old lock file describes readers of the old file; open makes a fresh one.
                unlink_quietly(self._path.with_name(self._path.name + LOCK_SUFFIX))
                fsync_path(self._path.parent)
            finally:
                self._open_env()  # the new store is in place either way

    def close(self) -> None:
        """Close the store; open snapshots are lost. Idempotent."""
        with self._write_lock, self._gate.exclusive():
            env, self._env = self._env, None
            for snapshot in self._snapshots:
                snapshot.invalidate("the store was closed")
            self._snapshots.clear()
            if env is not None:
                env.close()

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"state store {self._path} is closed")
        return self._env

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({str(self._path)!r}, applied_lsn={self._applied_lsn})"
