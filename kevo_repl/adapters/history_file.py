"""A node's history chain on disk: ``DIR/HISTORY``, one ``<history id hex> <fork LSN>`` a line.

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

__all__ = ["HISTORY_FILE", "load_chain", "save_chain"]

HISTORY_FILE: Final = "HISTORY"


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
    path = data_dir / HISTORY_FILE
    tmp = path.with_name(HISTORY_FILE + ".tmp")
    body = "".join(f"{h.hex()} {fork}\n" for h, fork in chain.entries)
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
