"""Building a fresh state store from bootstrap chunks, beside the live one.

The new file is ``<live>.bootstrap`` in the live file's directory, so that once complete it
replaces the live file with one atomic ``os.rename`` (done by
``StateStore.replace_with_bootstrap``). Until then it is never opened as a live store, and
``StateStore.open`` deletes a leftover one: an unfinished bootstrap never becomes live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import lmdb

from kevo_repl.adapters.state_format import (
    META_DB,
    Env,
    bootstrap_path,
    discard_bootstrap,
    fsync_path,
    grow_map,
    open_env,
    read_meta,
    storage_error,
    unlink_quietly,
    write_meta,
    write_txn,
)
from kevo_repl.core.errors import ProtocolError, StorageError

__all__ = ["BootstrapWriter", "check_finished"]


class BootstrapWriter:
    """Builds ``<live>.bootstrap`` from snapshot chunks arriving in strictly increasing key order.

    Appending in key order fills pages left to right (``MDB_APPEND``, no tree search); LMDB also
    refuses a key not above the last one, which is the order check. Nothing else opens the file,
    so it runs without a lock file. ``finish()`` makes it complete and durable; the live store
    then swaps it in with ``StateStore.replace_with_bootstrap()``.
    """

    def __init__(self, live_path: Path, map_size_bytes: int) -> None:
        self._path = bootstrap_path(live_path)
        discard_bootstrap(live_path)
        self._env: Env | None
        self._env, self._data, self._meta = open_env(
            self._path, map_size_bytes, sync=False, lock=False
        )
        self._keys_added = 0
        self._finished = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def keys_added(self) -> int:
        return self._keys_added

    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Append one chunk in one transaction; ``ProtocolError`` if ragged or out of order."""
        env = self._require_env()
        if len(keys) != len(values):
            raise ProtocolError(f"bootstrap chunk has {len(keys)} keys but {len(values)} values")
        if not keys:
            return

        def body(txn: lmdb.Transaction[bytes]) -> None:
            _, added = txn.cursor(db=self._data).putmulti(
                zip(keys, values, strict=True), append=True
            )
            if added != len(keys):
                raise ProtocolError("bootstrap keys are not in strictly increasing order")

        self._write(env, body, "bootstrap chunk")
        self._keys_added += len(keys)

    def finish(self, snapshot_lsn: int, history_id: bytes) -> None:
        """Record the snapshot's LSN and history, flush everything to disk and close the file."""
        env = self._require_env()
        if snapshot_lsn < 0 or not history_id:
            raise ProtocolError("bootstrap needs a snapshot LSN >= 0 and a history id")
        self._write(
            env, lambda txn: write_meta(txn, self._meta, snapshot_lsn, history_id), "finish"
        )
        try:
            env.sync(True)
            env.close()
        except lmdb.Error as exc:
            raise storage_error(self._path, "sync bootstrap", exc) from exc
        self._env = None
        fsync_path(self._path)
        self._finished = True

    def abort(self) -> None:
        """Drop the partial (or unused finished) bootstrap file."""
        env, self._env = self._env, None
        if env is not None:
            env.close()
        unlink_quietly(self._path)

    def _write(self, env: Env, body: Callable[[lmdb.Transaction[bytes]], None], what: str) -> None:
        try:
            write_txn(env, body, lambda: grow_map(env, self._path))
        except lmdb.BadValsizeError as exc:
            raise ProtocolError(
                f"{what}: empty key or key over {env.max_key_size()} bytes"
            ) from exc
        except (lmdb.Error, OSError) as exc:
            raise storage_error(self._path, what, exc) from exc

    def _require_env(self) -> Env:
        if self._env is None:
            raise StorageError(f"bootstrap {self._path} is already finished or aborted")
        return self._env

    def __enter__(self) -> BootstrapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.abort()


def check_finished(source: Path) -> None:
    """Refuse a bootstrap file that ``BootstrapWriter.finish()`` did not complete."""
    if not source.exists():
        raise StorageError(f"no bootstrap file at {source}")
    try:
        with lmdb.open(str(source), subdir=False, readonly=True, lock=False, max_dbs=2) as env:
            meta = env.open_db(META_DB, create=False)
            with env.begin() as txn:
                history_id = read_meta(txn, meta)[1]
    except lmdb.Error as exc:
        raise storage_error(source, "check bootstrap", exc) from exc
    if history_id is None:
        raise StorageError(f"bootstrap {source} is not finished (no history id)")
