"""Is a state store file intact? A structural check run in a child process, and quarantine.

The store commits with ``writemap`` and no sync between checkpoints (``state_lmdb.py``), and
LMDB documents that a system crash can then corrupt the file, not only lose the last
transactions. So after an unclean stop a node checks the store before serving it. LMDB trusts
its page pointers: a damaged file can make it raise, but also abort on an assertion (SIGABRT),
follow a garbage pointer (SIGSEGV) or touch a page past the end of the file (SIGBUS). So the
walk runs in a child, ``python -m kevo_repl.adapters.state_check PATH`` (one JSON line on
stdout, also handy for an operator), and a crash, timeout, non-zero exit or unreadable output
of it means "damaged".

Run it while no process has the store open: the child reads without LMDB's lock file. What it
cannot see: LMDB keeps no checksums, so changed bytes inside a key or value whose page
structure still holds pass. The free-page list, which only the next write would read, is
walked by a compacting copy to ``/dev/null`` (about a tenth of the check's time).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import lmdb

from kevo_repl.adapters.state_format import (
    APPLIED_LSN_KEY,
    DATA_DB,
    HISTORY_ID_KEY,
    LOCK_SUFFIX,
    META_DB,
    fsync_path,
    storage_error,
)
from kevo_repl.adapters.wal_segments import HISTORY_ID_BYTES

__all__ = ["StoreCheck", "check_store", "quarantine_store"]

CHILD_MODULE: Final = "kevo_repl.adapters.state_check"
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])
_LSN_BYTES: Final = 8


@dataclass(frozen=True)
class StoreCheck:
    """The verdict on one store file. ``ok`` with reason ``"absent"`` means no file at all.

    ``elapsed_s`` is the whole check as the caller waited for it, child start-up included.
    """

    ok: bool
    reason: str
    applied_lsn: int
    history_id: bytes | None
    keys: int
    elapsed_s: float


def check_store(path: Path, *, timeout_s: float = 600.0) -> StoreCheck:
    """Walk the store at ``path`` in a child process; any failure of the child is damage.

    Raises ``StorageError`` only when the check cannot run at all (the file is unreadable to
    us, the child cannot start): that says nothing about the store, so it must not be
    quarantined on that ground.
    """
    path = Path(path)
    started = time.monotonic()

    def verdict(
        ok: bool, reason: str, lsn: int = 0, hid: bytes | None = None, keys: int = 0
    ) -> StoreCheck:
        return StoreCheck(ok, reason, lsn, hid, keys, time.monotonic() - started)

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return verdict(False, "not a regular file")
        os.close(os.open(path, os.O_RDONLY))  # permission problems are ours, not damage
    except FileNotFoundError:
        return verdict(True, "absent")
    except OSError as exc:
        raise storage_error(path, "check", exc) from exc
    pythonpath = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", CHILD_MODULE, str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONPATH": pythonpath},
        )
    except subprocess.TimeoutExpired:  # run() has killed and reaped the child
        return verdict(False, f"check timed out after {timeout_s:g} s")
    except OSError as exc:
        raise storage_error(path, "start check", exc) from exc
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    detail = f": {lines[-1][:300]}" if lines else ""
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return verdict(False, f"check crashed ({name}){detail}")
    if proc.returncode:
        return verdict(False, f"check exited with status {proc.returncode}{detail}")
    try:
        report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        ok, reason = report["ok"], report["reason"]
        lsn, keys, hid = report["applied_lsn"], report["keys"], report["history_id"]
        if not (isinstance(ok, bool) and isinstance(reason, str)):
            raise TypeError("ok/reason")
        if not (type(lsn) is int and type(keys) is int):
            raise TypeError("applied_lsn/keys")
        return verdict(ok, reason, lsn, None if hid is None else bytes.fromhex(hid), keys)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return verdict(False, f"unreadable check output ({exc}): {proc.stdout[:200]!r}")


def quarantine_store(path: Path) -> Path:
    """Move a damaged store (and its lock file) aside as ``<name>.damaged-<UTC time>``.

    Kept, not deleted, so an operator can inspect it; the directory is synced so the move
    survives a crash and the node can start on a fresh store. Returns the new path.
    """
    path = Path(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 0
    while os.path.lexists(target) or os.path.lexists(_lock(target)):  # rename would overwrite
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        os.rename(path, target)
        if os.path.lexists(_lock(path)):
            os.rename(_lock(path), _lock(target))
    except OSError as exc:
        raise storage_error(path, "quarantine", exc) from exc
    fsync_path(path.parent)
    return target


def _lock(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


# -- the child --------------------------------------------------------------------------------


def _walk(path: Path) -> dict[str, Any]:
    """Open read-only and read every key and value of both databases; the report as a dict."""
    found: dict[str, Any] = {"applied_lsn": 0, "history_id": None, "keys": 0}
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, subdir=False, max_dbs=2)
    except lmdb.Error as exc:
        return {**found, "ok": False, "reason": f"open: {exc}"}
    try:
        reason = _walk_env(env, path, found)
    except lmdb.Error as exc:
        reason = f"read: {exc}"
    finally:
        env.close()
    if reason is not None:  # nothing read from a damaged store is to be trusted
        return {"applied_lsn": 0, "history_id": None, "keys": 0, "ok": False, "reason": reason}
    return {**found, "ok": True, "reason": "ok"}


def _walk_env(env: Any, path: Path, found: dict[str, Any]) -> str | None:
    end = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = path.stat().st_size
    if size < end:  # reading those pages would fault (SIGBUS): say it plainly instead
        return f"file has {size} bytes but its last page ends at byte {end}"
    with open(os.devnull, "wb") as sink:  # py-lmdb reads the free-page list only this way
        env.copyfd(sink.fileno(), compact=True)
    with env.begin() as txn:
        names = [key for key, _ in txn.cursor()]
        if names != sorted([DATA_DB, META_DB]):
            return f"main database holds {names!r}, expected {[DATA_DB, META_DB]!r}"
        meta: dict[bytes, bytes] = {}
        dbs = {name: env.open_db(name, txn=txn, create=False) for name in names}
        max_key = env.max_key_size()
        for name, db in dbs.items():
            count, previous = 0, b""
            for key, value in txn.cursor(db=db):
                if not key or len(key) > max_key or (count and key <= previous):
                    return f"{name.decode()}: key {key[:64]!r} out of order or of bad size"
                if name == META_DB:
                    meta[key] = value
                count, previous = count + 1, key
            entries = txn.stat(db)["entries"]
            if count != entries:
                return f"{name.decode()}: walked {count} keys, its header says {entries}"
            if name == DATA_DB:
                found["keys"] = count
    return _check_meta(meta, found)


def _check_meta(meta: dict[bytes, bytes], found: dict[str, Any]) -> str | None:
    """Only ``applied_lsn`` (8 bytes) and ``history_id`` (16), together or not at all."""
    extra = sorted(set(meta) - {APPLIED_LSN_KEY, HISTORY_ID_KEY})
    if extra:
        return f"meta: unexpected keys {extra!r}"
    lsn, history = meta.get(APPLIED_LSN_KEY), meta.get(HISTORY_ID_KEY)
    if lsn is not None and len(lsn) != _LSN_BYTES:
        return f"meta: applied_lsn has {len(lsn)} bytes, not {_LSN_BYTES}"
    if history is not None and len(history) != HISTORY_ID_BYTES:
        return f"meta: history_id has {len(history)} bytes, not {HISTORY_ID_BYTES}"
    if (lsn is None) != (history is None):
        return "meta: applied_lsn and history_id must be present together"
    found["applied_lsn"] = int.from_bytes(lsn, "big") if lsn else 0
    found["history_id"] = history.hex() if history else None
    if found["keys"] and not found["applied_lsn"]:
        return f"data holds {found['keys']} keys at applied_lsn 0"
    return None


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m {CHILD_MODULE} STORE_FILE", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is expected: no core file
    started = time.monotonic()
    report = _walk(Path(argv[0]))
    report["elapsed_s"] = round(time.monotonic() - started, 6)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
