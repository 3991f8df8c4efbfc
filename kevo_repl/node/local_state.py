"""A node's data directory: lock, WAL, store and history chain, opened and kept consistent.

Every node, primary or replica, keeps the same three things: a WAL (its own records, or its
upstream's byte for byte), an LMDB store and its history chain (``DIR/HISTORY``). Opening
them follows one set of rules:

* the directory is locked first (two nodes on one directory would hand out the same LSNs);
* after an unclean stop (the lock file says the last holder was still running) the store is
  checked in a child process before anything reads it: with writemap and no sync a power
  loss may leave it damaged, not only stale;
* the store must agree with the WAL and the chain: its history owns its applied LSN, and it
  is not ahead of the WAL (a store ahead of its WAL kept what the WAL lost);
* a store the WAL is ahead of is caught up from the WAL (a crash between writing a record
  and applying it), so the node serves from its own log, never needing its upstream for it.

A store that is damaged or ahead of the WAL is moved aside and rebuilt from the WAL when the
WAL still starts at LSN 1. Otherwise a primary refuses to start, naming the fix (nothing is
changed); a replica starts empty, WAL included: its upstream has everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kevo_repl.adapters.datadir import DataDirLock
from kevo_repl.adapters.history_file import (
    load_chain,
    load_consistent_at,
    load_own_history,
    save_chain,
    save_consistent_at,
    save_own_history,
)
from kevo_repl.adapters.state_check import check_store, quarantine_store
from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import FsyncPolicy, WriteAheadLog
from kevo_repl.core.errors import HistoryMismatchError, StorageError
from kevo_repl.core.history import HistoryChain
from kevo_repl.core.record import decode_record
from kevo_repl.wire.batch import decode_batch

__all__ = ["STORE_FILE", "SYNC_LOG_ENV", "LocalState", "open_local_state", "replay_wal"]

STORE_FILE = "state.mdb"
WAL_DIR = "wal"
SYNC_LOG_ENV = "KEVO_WAL_SYNC_LOG"


@dataclass(slots=True)
class LocalState:
    data_dir: Path
    lock: DataDirLock
    store: StateStore
    wal: WriteAheadLog
    chain: HistoryChain
    segment_bytes: int
    rebuilt: bool = False  # the store was rebuilt from the WAL (or started empty)
    consistent_at: int = 0  # not a state of its history (never served) before: a rewind's

    def save_consistent_at(self, lsn: int) -> None:
        save_consistent_at(self.data_dir, lsn)
        self.consistent_at = lsn

    def save_chain(self, chain: HistoryChain, *, started_here: bool = False) -> None:
        """Make ``chain`` ours, durably, before any record of its new histories is written;
        ``started_here``: its current history is this directory's own (a promotion)."""
        if chain != self.chain:
            save_chain(self.data_dir, chain)
            self.chain = chain
        if started_here:
            save_own_history(self.data_dir, chain.current)

    def reset_wal(self, next_lsn: int, history_id: bytes) -> None:
        """Start an empty WAL whose next record is ``next_lsn`` (after a bootstrap installed
        a snapshot at ``next_lsn - 1``: the old log no longer leads to the store's state)."""
        self.wal.close()
        shutil.rmtree(self.data_dir / WAL_DIR, ignore_errors=True)
        self.wal = _open_wal(self.data_dir, self.segment_bytes, history_id, first_lsn=next_lsn)

    def reopen_wal(self) -> None:
        """After a failed write (the WAL refuses all work then): recover and go on."""
        with contextlib.suppress(StorageError):
            self.wal.close()
        self.wal = _open_wal(self.data_dir, self.segment_bytes, None)

    def close(self, *, clean: bool) -> None:
        """Close the store and WAL; ``clean`` records a clean stop in the lock file."""
        try:
            try:
                self.store.checkpoint()
            finally:
                self.store.close()
                self.wal.close()
        except BaseException:
            self.lock.release(clean=False)
            raise
        self.lock.release(clean=clean)


def open_local_state(data_dir: Path, role: str, segment_bytes: int, log: Any) -> LocalState:
    """Open (or create) a node's data directory; ``role`` is "primary" or "replica"."""
    lock = DataDirLock.acquire(data_dir, role)
    wal: WriteAheadLog | None = None
    try:
        chain = load_chain(data_dir)
        path = data_dir / STORE_FILE
        damage = "" if lock.previous_stop_clean else _check(path, log)
        store = None if damage else StateStore.open(path)
        if not (data_dir / WAL_DIR).exists() and store is not None and store.applied_lsn:
            # A replica's directory from before replicas kept a WAL: its log starts here.
            wal = _open_wal(
                data_dir, segment_bytes, store.history_id, first_lsn=store.applied_lsn + 1
            )
        else:
            wal = _open_wal(data_dir, segment_bytes, chain.current if chain else None)
        _log_wal_recovery(wal, log)
        if store is not None and store.applied_lsn > wal.last_lsn:
            damage = (
                f"store applied LSN {store.applied_lsn} is ahead of the WAL's last LSN "
                f"{wal.last_lsn} (the WAL lost a tail the store had applied)"
            )
            store.close()
            store = None
        if store is None:
            if wal.retained_from_lsn != 1 and role == "primary":
                raise StorageError(_cannot_rebuild(path, wal, damage))
            _quarantine(path, damage, log)
            if wal.retained_from_lsn != 1:  # a replica: its upstream has it all
                log.warning("wal_reset", reason="the store cannot be rebuilt from this WAL")
                wal.close()
                shutil.rmtree(data_dir / WAL_DIR)
                wal = _open_wal(data_dir, segment_bytes, None)
            store = StateStore.open(path)
        try:
            new_history = chain is None and wal.last_lsn == 0
            chain = _chain(chain, wal, store, role, data_dir)
            if role == "primary":
                _check_owner(data_dir, chain, new_history, lock.previous)
            replayed = replay_wal(wal, store, wal.last_lsn)
        except BaseException:
            store.close()
            raise
        if replayed:
            log.info("store_caught_up_from_wal", entries=replayed, lsn=store.applied_lsn)
        return LocalState(
            data_dir,
            lock,
            store,
            wal,
            chain,
            segment_bytes,
            rebuilt=bool(damage),
            consistent_at=load_consistent_at(data_dir),
        )
    except BaseException:
        if wal is not None:
            wal.close()
        lock.release(clean=lock.previous_stop_clean)  # as we found it
        raise


def replay_wal(wal: WriteAheadLog, store: StateStore, upto_lsn: int) -> int:
    """Apply the WAL's records the store lacks, up to ``upto_lsn``; entries applied."""
    start = store.applied_lsn + 1
    if start > min(upto_lsn, wal.last_lsn):
        return 0
    replayed = 0
    for record in wal.read_from(start):
        decoded = decode_record(record)
        if decoded.last_lsn > upto_lsn:
            break
        if decoded.last_lsn <= store.applied_lsn:
            continue
        batch = decode_batch(decoded.payload)
        store.apply_many(
            [(decoded.first_lsn, decoded.last_lsn, batch.ops, batch.keys, batch.values)],
            batch.history_id,
            new_history=batch.history_id != store.history_id,
        )
        replayed += decoded.count
    return replayed


def _open_wal(
    data_dir: Path, segment_bytes: int, history_id: bytes | None, first_lsn: int = 1
) -> WriteAheadLog:
    """Open the WAL; a new one gets ``history_id`` and starts at ``first_lsn``."""
    # The node syncs the WAL itself (group commit, or after a replica's drain), in every
    # mode: FsyncPolicy.NONE keeps the WAL's own timer thread out of it.
    sync_log = os.environ.get(SYNC_LOG_ENV)  # fault tests: see WriteAheadLog.open
    new = not (data_dir / WAL_DIR).exists()
    return WriteAheadLog.open(
        data_dir / WAL_DIR,
        fsync=FsyncPolicy.NONE,
        segment_bytes=segment_bytes,
        sync_log=Path(sync_log) if sync_log else None,
        history_id=history_id if new else None,
        first_lsn=first_lsn,
    )


def _check_owner(
    data_dir: Path, chain: HistoryChain, new: bool, previous: dict[str, object] | None
) -> None:
    """A primary only on a history this directory started (``adapters/history_file.py``):
    ``new`` (its chain starts now), or owned, or run as a primary before the marker."""
    owned = load_own_history(data_dir)
    if owned == chain.current:
        return
    legacy = owned is None and previous is not None and previous.get("role") == "primary"
    if new or legacy:
        save_own_history(data_dir, chain.current)
        return
    raise StorageError(
        f"{data_dir} holds a copy of history {chain.current.hex()[:12]}, which another node "
        "started (this directory followed it as a replica): starting it as a primary would "
        "make a second primary of the same history, which followers cannot tell from the "
        "first (a split brain). Start it as a replica of that history's primary, promote it "
        "while it runs (kevo-repl promote: a new history), or restore a backup of it with "
        "--new-history"
    )


def _chain(
    stored: HistoryChain | None,
    wal: WriteAheadLog,
    store: StateStore,
    role: str,
    data_dir: Path,
) -> HistoryChain:
    """The node's chain, checked against what its WAL and store hold."""
    chain = stored
    if chain is None:  # a directory from before chains held one history
        if wal.last_lsn or role == "primary":
            chain = HistoryChain.root(wal.history_id)
        elif store.history_id is not None:
            chain = HistoryChain.root(store.history_id)
        else:
            chain = HistoryChain()
        if chain:
            save_chain(data_dir, chain)
    wal_histories = [(first, h) for first, h in wal.segment_histories()]
    nonempty = wal_histories[:-1] if wal.last_lsn < wal_histories[-1][0] else wal_histories
    for first, h in nonempty:
        if chain.at(first) != h:
            raise HistoryMismatchError(
                f"{data_dir}: WAL segment from LSN {first} is of history {h.hex()}, which "
                f"the chain ({chain.describe()}) does not give that LSN; the data directory "
                "is inconsistent"
            )
    if store.applied_lsn and chain.at(store.applied_lsn) != store.history_id:
        held = (store.history_id or b"").hex()
        raise HistoryMismatchError(
            f"{data_dir}: the store holds history {held} at LSN {store.applied_lsn}, which "
            f"the chain ({chain.describe()}) does not; the data directory is inconsistent"
        )
    return chain


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


def _cannot_rebuild(path: Path, wal: WriteAheadLog, why: str) -> str:
    return (
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


def _log_wal_recovery(wal: WriteAheadLog, log: Any) -> None:
    report = wal.recovery
    for d in report.dropped:
        log.warning(
            "wal_truncated", path=d.path, offset=d.offset, bytes=d.bytes_dropped, reason=d.reason
        )
    log.info("wal_recovered", segments=report.segments, lsn=report.last_lsn)
