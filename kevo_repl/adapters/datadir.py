"""A node's hold on its data directory: an exclusive lock, and whether it last stopped cleanly.

Two nodes on one directory hand out the same LSNs and then disagree forever (a second
``primary --data DIR`` on a running primary's directory served, and after a restart its WAL
and store no longer matched). So a node takes ``DIR/LOCK`` with ``flock`` for its whole life,
as PostgreSQL takes ``postmaster.pid``; the kernel releases it when the process dies, however
it dies, so a stale lock never needs removing by hand. The file says who holds it (PID,
role, since when) so the refusal can name the holder, and whether the holder stopped
cleanly: a directory left ``running`` by a dead process had an unclean stop (a crash, a
SIGKILL or a power loss), after which the store is checked before it is served.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from kevo_repl.core.errors import KevoError, StorageError

__all__ = ["LOCK_NAME", "DataDirLock", "DataDirLockedError", "StartLeftovers"]

LOCK_NAME: Final = "LOCK"


class DataDirLockedError(KevoError):
    """Another live process holds the data directory."""


class DataDirLock:
    """Held from ``acquire`` until ``release``; ``previous_stop_clean`` says how the last
    holder stopped (True for a new directory)."""

    def __init__(self, path: Path, fd: int, previous: dict[str, object] | None, role: str):
        self.path = path
        self._fd = fd
        self.role = role
        self.previous = previous
        self.previous_stop_clean = previous is None or previous.get("state") == "stopped"

    @classmethod
    def acquire(cls, data_dir: Path, role: str) -> DataDirLock:
        """Lock ``data_dir`` (created if missing) for this process, or raise
        ``DataDirLockedError`` naming the holder. ``previous`` is what the last holder wrote;
        a directory holding data but no lock file (made by an older version) counts as an
        unclean stop, to be safe."""
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / LOCK_NAME
            existed = path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"data directory {data_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(f"locking {path}: {exc.strerror or exc}") from None
            raise DataDirLockedError(_held_message(data_dir, holder)) from None
        previous = _read(fd) if existed else None
        if previous is None and any(p.name != LOCK_NAME for p in data_dir.iterdir()):
            previous = {"state": "unknown (no lock file)"}
        lock = cls(path, fd, previous, role)
        lock._write("running")
        return lock

    def release(self, *, clean: bool) -> None:
        """Give the directory up; ``clean`` records that everything was flushed and closed."""
        if self._fd < 0:
            return
        try:
            if clean:
                self._write("stopped")
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def _write(self, state: str) -> None:
        doc = {
            "pid": os.getpid(),
            "role": self.role,
            "state": state,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        data = (json.dumps(doc) + "\n").encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"writing {self.path}: {exc.strerror or exc}") from None


def _read(fd: int) -> dict[str, object] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        doc = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return {"state": "unreadable"}
    return doc if isinstance(doc, dict) else {"state": "unreadable"}


def _held_message(data_dir: Path, holder: dict[str, object] | None) -> str:
    if not holder or "pid" not in holder:
        who = "another process"
    else:
        who = f"PID {holder['pid']} ({holder.get('role', '?')}, since {holder.get('since', '?')})"
    return (
        f"data directory {data_dir} is in use by {who}; two nodes on one directory would "
        "hand out the same LSNs. Stop that process, or give this node its own --data"
    )


class StartLeftovers:
    """What a node's start creates in its data directory, removed again if the start fails.

    A start that fails (a port in use, a refused history) must leave the directory as it
    found it: a ``wal/`` or an empty store left behind changes what the next start of that
    directory does. Only the node's own files that did not exist before are removed (never a
    quarantined store, never anything when another process holds the directory's lock).
    """

    OWN: Final = (
        "wal",
        "state.mdb",
        "state.mdb-lock",
        "HISTORY",
        "CONSISTENT_AT",
        "OWN_HISTORY",
        LOCK_NAME,
    )

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.existed = data_dir.exists()
        self.before = set(os.listdir(data_dir)) if self.existed and data_dir.is_dir() else set()

    def remove(self, exc: BaseException) -> None:
        if isinstance(exc, DataDirLockedError):
            return  # the holder may be creating these files right now
        if not self.existed:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        for name in self.OWN:
            path = self.data_dir / name
            if name in self.before or not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
