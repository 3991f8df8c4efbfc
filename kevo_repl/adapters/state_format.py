"""The state store's LMDB file: layout, tuning, growth and the helpers every part shares.

One LMDB file (``subdir=False``) holds two named databases: ``data`` (the key-value pairs,
keys in byte order) and ``meta`` (``applied_lsn`` as 8 bytes big-endian, ``history_id``). The
live store, its snapshots and a bootstrap target all use this layout, so a finished bootstrap
file becomes the live store by a single ``os.rename``. Internal to ``kevo_repl.adapters``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import lmdb

from kevo_repl.core.errors import StorageError

__all__ = [
    "APPLIED_LSN_KEY",
    "BOOTSTRAP_SUFFIX",
    "DATA_DB",
    "HISTORY_ID_KEY",
    "LOCK_SUFFIX",
    "MAX_READERS",
    "META_DB",
    "Db",
    "Env",
    "ReadGate",
    "bootstrap_path",
    "discard_bootstrap",
    "fsync_path",
    "grow_map",
    "open_env",
    "read_meta",
    "release_mapped_pages",
    "storage_error",
    "unlink_quietly",
    "write_meta",
    "write_txn",
]

DATA_DB: Final = b"data"
META_DB: Final = b"meta"
APPLIED_LSN_KEY: Final = b"applied_lsn"
HISTORY_ID_KEY: Final = b"history_id"
BOOTSTRAP_SUFFIX: Final = ".bootstrap"
LOCK_SUFFIX: Final = "-lock"
# Every read transaction holds one reader slot until it ends (py-lmdb opens with MDB_NOTLS, so
# slots belong to transactions, not threads). 126 is LMDB's default and costs 8 KiB of lock
# file; the store caps long-lived snapshots at MAX_SNAPSHOTS so short reads always find a slot.
MAX_READERS: Final = 126
MAX_GROWTHS: Final = 48  # doublings per write before giving up (64 MiB * 2**48 is absurd)

Env = lmdb.Environment
Db = lmdb._Database


def bootstrap_path(live_path: Path) -> Path:
    """Where a bootstrap of the store at ``live_path`` is built (same directory: rename works)."""
    return live_path.with_name(live_path.name + BOOTSTRAP_SUFFIX)


def storage_error(path: Path, action: str, exc: BaseException) -> StorageError:
    """Our error for a failed LMDB or OS call on the store at ``path``."""
    return StorageError(f"state store {path}: {action} failed: {exc}")


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it exists."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(path, "unlink", exc) from exc


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (a rename is durable once its directory is synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(path, "fsync", exc) from exc


def preallocate(path: Path, size_bytes: int) -> None:
    """Reserve disk blocks for the whole map.

    With ``writemap`` the file is a sparse file as large as the map and LMDB writes pages
    through the mapping, so a full disk would surface as SIGBUS at some later page fault.
    Allocating up front turns it into a ``StorageError`` here, when the map is set or grown.
    """
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size_bytes)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem cannot: stay sparse
            return
        raise storage_error(path, "preallocate", exc) from exc


def open_env(
    path: Path, map_size_bytes: int, *, sync: bool, lock: bool = True
) -> tuple[Env, Db, Db]:
    """Open (creating) an LMDB file with the store's tuning; returns env, data db, meta db.

    ``writemap`` writes pages in place instead of copying them through ``write()`` (about 2.5x
    faster for random keys here); ``sync=False``/``metasync=False`` leave flushing to
    ``checkpoint()`` because the WAL, not LMDB, is the durability point; ``readahead=False``
    because access is random and readahead would evict useful pages.
    """
    try:
        size = max(map_size_bytes, path.stat().st_size if path.exists() else 0)
        env = lmdb.open(
            str(path),
            map_size=size,
            subdir=False,
            max_dbs=2,
            max_readers=MAX_READERS,
            max_spare_txns=4,
            writemap=True,
            sync=sync,
            metasync=sync,
            readahead=False,
            lock=lock,
        )
        try:
            data = env.open_db(DATA_DB)
            meta = env.open_db(META_DB)
            preallocate(path, env.info()["map_size"])
        except BaseException:
            env.close()
            raise
    except (lmdb.Error, OSError) as exc:
        raise storage_error(path, "open", exc) from exc
    return env, data, meta


def read_meta(txn: lmdb.Transaction[bytes], meta: Db) -> tuple[int, bytes | None]:
    """``(applied_lsn, history_id)`` as seen by ``txn``; ``(0, None)`` for an empty store."""
    raw = txn.get(APPLIED_LSN_KEY, db=meta)
    return (int.from_bytes(raw, "big") if raw else 0), txn.get(HISTORY_ID_KEY, db=meta)


def write_meta(txn: lmdb.Transaction[bytes], meta: Db, lsn: int, history_id: bytes | None) -> None:
    """Record ``applied_lsn`` (and ``history_id`` when given) inside the caller's transaction."""
    txn.put(APPLIED_LSN_KEY, lsn.to_bytes(8, "big"), db=meta)
    if history_id is not None:
        txn.put(HISTORY_ID_KEY, history_id, db=meta)


def grow_map(env: Env, path: Path) -> None:
    """Double the map. No transaction of ``env`` may be open (py-lmdb 3 aborts them)."""
    try:
        size = env.info()["map_size"] * 2
        env.set_mapsize(size)
    except lmdb.Error as exc:
        raise storage_error(path, "grow map", exc) from exc
    preallocate(path, size)


def write_txn(
    env: Env, body: Callable[[lmdb.Transaction[bytes]], None], grow: Callable[[], None]
) -> None:
    """Run ``body`` in one write transaction, growing the map and retrying when it is full."""
    for _ in range(MAX_GROWTHS):
        try:
            with env.begin(write=True) as txn:
                body(txn)
            return
        except lmdb.MapFullError:
            grow()
    raise lmdb.MapFullError("map still full after doubling it many times")


class ReadGate:
    """Reads share the environment; a map resize or close needs it alone.

    ``set_mapsize`` aborts every open transaction, so a short read (several calls in one
    transaction) must not straddle it. Waiting resizers block new readers (no starvation).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive_waiting = 0
        self._exclusive = False

    def enter(self) -> None:
        with self._cond:
            while self._exclusive or self._exclusive_waiting:
                self._cond.wait()
            self._readers += 1

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            while self._exclusive or self._readers:
                self._cond.wait()
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def discard_bootstrap(live_path: Path) -> None:
    """Delete a leftover bootstrap of ``live_path``: an unfinished one must never go live."""
    target = bootstrap_path(live_path)
    unlink_quietly(target)
    unlink_quietly(target.with_name(target.name + LOCK_SUFFIX))


_MADV_DONTNEED: Final = 4


def release_mapped_pages(path: Path) -> int:
    """Unmap this process's resident pages of the LMDB file at ``path``; returns bytes.

    A bootstrap scans the whole store through LMDB's shared mapping, and every page it touches
    stays in the process's RSS. ``MADV_DONTNEED`` on a ``MAP_SHARED`` file mapping only drops
    page-table entries: the data (dirty pages included) stays in the page cache and faults
    back in on the next access, so it is safe while writers go on. Linux only; elsewhere a
    no-op.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    target = str(Path(path).resolve())
    released = 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "s" not in fields[1]:
            continue  # only the shared mapping of this very file
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
            released += end - start
    return released
