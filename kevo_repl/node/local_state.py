"""Opening a node's data directory: lock, WAL recovery, the store check, WAL-store agreement.

Shared by both kinds of node, so the rules are one: the directory is locked first (two nodes
on one directory would hand out the same LSNs); after an unclean stop (the lock file says the
last holder was still running) the LMDB store is checked in a child process before anything
reads it, because with writemap and no sync a power loss may leave it damaged, not only
stale. What happens to a damaged store depends on what can rebuild it:

* a primary whose WAL still starts at LSN 1 moves the store aside and replays the whole WAL;
  a primary whose WAL was retained away refuses to start, naming the fix (the store is left
  as it was, never served);
* a replica moves the store aside and starts empty: its primary has everything (catch-up
  from LSN 1 or one bootstrap).

A primary's store must also agree with its WAL: a store ahead of the WAL (the WAL lost a tail
the store had applied) is rebuilt the same way or refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kevo_repl.adapters.datadir import DataDirLock
from kevo_repl.adapters.state_check import check_store, quarantine_store
from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog
from kevo_repl.core.errors import HistoryMismatchError, StorageError

__all__ = [
    "STORE_FILE",
    "SYNC_LOG_ENV",
    "LocalState",
    "open_primary_state",
    "open_replica_state",
]

STORE_FILE = "state.mdb"
SYNC_LOG_ENV = "KEVO_WAL_SYNC_LOG"


@dataclass(slots=True)
class LocalState:
    lock: DataDirLock
    store: StateStore
    wal: WriteAheadLog | None = None
    rebuilt: bool = False  # the store was rebuilt from the WAL (or started empty)

    def close(self, *, clean: bool) -> None:
        """Close the store and WAL; ``clean`` records a clean stop in the lock file."""
        try:
            try:
                self.store.checkpoint()
            finally:
                self.store.close()
                if self.wal is not None:
                    self.wal.close()
        except BaseException:
            self.lock.release(clean=False)
            raise
        self.lock.release(clean=clean)


def open_primary_state(data_dir: Path, segment_bytes: int, log: Any) -> LocalState:
    lock = DataDirLock.acquire(data_dir, "primary")
    wal: WriteAheadLog | None = None
    try:
        # The group committer syncs every group itself, in every mode (FsyncPolicy.NONE
        # keeps the WAL's own timer thread out of it).
        sync_log = os.environ.get(SYNC_LOG_ENV)  # fault tests: see WriteAheadLog.open
        wal = WriteAheadLog.open(
            data_dir / "wal",
            fsync=FsyncPolicy.NONE,
            segment_bytes=segment_bytes,
            sync_log=Path(sync_log) if sync_log else None,
        )
        _log_wal_recovery(wal, log)
        path = data_dir / STORE_FILE
        damage = "" if lock.previous_stop_clean else _check(path, log)
        if damage:
            _rebuildable_or_refuse(path, wal, damage)
            _quarantine(path, damage, log)
        store = StateStore.open(path)
        try:
            _check_history(store, wal, data_dir)
            if store.applied_lsn > wal.last_lsn:
                why = (
                    f"store applied LSN {store.applied_lsn} is ahead of the WAL's last LSN "
                    f"{wal.last_lsn} (the WAL lost a tail the store had applied)"
                )
                _rebuildable_or_refuse(path, wal, why)
                store.close()
                _quarantine(path, why, log)
                store = StateStore.open(path)
                damage = why
        except BaseException:
            store.close()
            raise
        return LocalState(lock, store, wal, rebuilt=bool(damage))
    except BaseException:
        if wal is not None:
            wal.close()
        lock.release(clean=lock.previous_stop_clean)  # as we found it: we changed nothing
        raise


def open_replica_state(data_dir: Path, log: Any) -> LocalState:
    lock = DataDirLock.acquire(data_dir, "replica")
    try:
        path = data_dir / STORE_FILE
        damage = "" if lock.previous_stop_clean else _check(path, log)
        if damage:
            _quarantine(path, damage, log)
        return LocalState(lock, StateStore.open(path), rebuilt=bool(damage))
    except BaseException:
        lock.release(clean=lock.previous_stop_clean)
        raise


def _check(path: Path, log: Any) -> str:
    """After an unclean stop: the damage found in the store file, or "" if it is sound."""
    result = check_store(path)
    log.info(
        "store_checked",
        path=str(path),
        ok=result.ok,
        reason=result.reason,
        keys=result.keys,
        applied_lsn=result.applied_lsn,
        seconds=round(result.elapsed_s, 3),
    )
    return "" if result.ok else result.reason


def _rebuildable_or_refuse(path: Path, wal: WriteAheadLog, why: str) -> None:
    if wal.retained_from_lsn == 1:
        return
    raise StorageError(
        f"{path}: {why}, and the WAL starts at LSN {wal.retained_from_lsn}, so the store "
        "cannot be rebuilt from it here. Nothing was changed. Start this node as a replica "
        "of a node that has the data (with --reinit), or restore the data directory from a "
        "backup"
    )


def _quarantine(path: Path, why: str, log: Any) -> None:
    if not path.exists():
        return
    moved = quarantine_store(path)
    log.warning("store_damaged", path=str(path), moved_to=str(moved), reason=why)


def _check_history(store: StateStore, wal: WriteAheadLog, data_dir: Path) -> None:
    if store.history_id not in (None, wal.history_id):
        stored = store.history_id.hex() if store.history_id else "none"
        raise HistoryMismatchError(
            f"{data_dir}: store history {stored} differs from WAL history "
            f"{wal.history_id.hex()}; the data directory is inconsistent"
        )


def _log_wal_recovery(wal: WriteAheadLog, log: Any) -> None:
    report = wal.recovery
    for d in report.dropped:
        log.warning(
            "wal_truncated", path=d.path, offset=d.offset, bytes=d.bytes_dropped, reason=d.reason
        )
    log.info("wal_recovered", segments=report.segments, lsn=report.last_lsn)
