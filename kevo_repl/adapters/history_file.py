"""A node's history chain on disk: ``DIR/HISTORY``, one ``<history id hex> <fork LSN>`` a line,
``DIR/CONSISTENT_AT``, the LSN a rewound store must reach before it may be served, and
``DIR/OWN_HISTORY``, the history this directory started (as a new primary, by a promotion
or a restore with a new history): only on that history may it be started as a primary, or
a replica's copy of a history would become a second primary of it that followers could not
tell from the first.

Like PostgreSQL's timeline history files: small, text, written whole to a temporary file,
fsynced and renamed over the old one (then the directory is fsynced), so a crash leaves the
old chain or the new one. A node writes it before it writes a record of a new history, so
its WAL never holds a history its chain does not know.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from kevo_repl.adapters.wal_segments import fsync_dir
from kevo_repl.core.errors import StorageError
from kevo_repl.core.history import HistoryChain, HistoryError

__all__ = [
    "CONSISTENT_AT_FILE",
    "HISTORY_FILE",
    "OWN_HISTORY_FILE",
    "load_chain",
    "load_consistent_at",
    "load_own_history",
    "save_chain",
    "save_consistent_at",
    "save_own_history",
]

HISTORY_FILE: Final = "HISTORY"
CONSISTENT_AT_FILE: Final = "CONSISTENT_AT"
OWN_HISTORY_FILE: Final = "OWN_HISTORY"


def load_chain(data_dir: Path) -> HistoryChain | None:
    """The chain stored in ``data_dir`` (None when there is no file)."""
    path = data_dir / HISTORY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"reading {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[bytes, int]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            hid_hex, fork = line.split()
            pairs.append((bytes.fromhex(hid_hex), int(fork)))
        except ValueError:
            raise StorageError(f"{path}:{n}: not '<history id hex> <fork LSN>': {line!r}") from None
    try:
        return HistoryChain.of(pairs)
    except HistoryError as exc:
        raise StorageError(f"{path}: {exc}") from None


def save_chain(data_dir: Path, chain: HistoryChain) -> None:
    """Replace the stored chain durably (temp file, fsync, rename, directory fsync)."""
    _replace(data_dir, HISTORY_FILE, "".join(f"{h.hex()} {fork}\n" for h, fork in chain.entries))


def load_consistent_at(data_dir: Path) -> int:
    """The LSN a rewound store must reach before it is a state of its history (0: none)."""
    path = data_dir / CONSISTENT_AT_FILE
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise StorageError(f"reading {path}: {exc}") from None


def save_consistent_at(data_dir: Path, lsn: int) -> None:
    """Saved before a rewind's store write: a restart before ``lsn`` must not serve reads."""
    if lsn or (data_dir / CONSISTENT_AT_FILE).exists():
        _replace(data_dir, CONSISTENT_AT_FILE, f"{lsn}\n")


def load_own_history(data_dir: Path) -> bytes | None:
    """The history this directory started (None: none, or a directory from before)."""
    path = data_dir / OWN_HISTORY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"reading {path}: {exc}") from None


def save_own_history(data_dir: Path, history_id: bytes) -> None:
    """Saved with the chain that starts ``history_id`` here."""
    _replace(data_dir, OWN_HISTORY_FILE, history_id.hex() + "\n")


def _replace(data_dir: Path, name: str, body: str) -> None:
    path = data_dir / name
    tmp = path.with_name(name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(data_dir)
    except OSError as exc:
        raise StorageError(f"writing {path}: {exc.strerror or exc}") from None
