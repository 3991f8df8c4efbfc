"""``kevo-repl backup`` and ``restore``: a consistent copy of a node, as a data directory.

A backup reads the node's store from one LMDB read transaction over the bootstrap stream
(the node holds a snapshot at LSN L, writes go on, nothing forks or pauses), and writes what
a node opens: ``state.mdb`` at L of the node's history, its chain in ``HISTORY``, and
``BACKUP.json`` saying what it is. No WAL: a node opening it starts its WAL at L + 1.

* As a **replica** it registers at L and catches up by WalSync, no bootstrap, as long as its
  upstream's WAL still holds L + 1 (else one bootstrap, as for any replica that far behind).
* As a **primary** it must not continue the source's history (two primaries writing LSNs
  L + 1... of one history would diverge silently): ``restore --new-history`` forks a new
  history at L first, as ``promote`` does, and a primary refuses a backup not restored so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kevo_repl.adapters.history_file import load_chain, save_chain, save_own_history
from kevo_repl.adapters.state_bootstrap import check_finished
from kevo_repl.adapters.state_format import bootstrap_path, fsync_path
from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.client import Client
from kevo_repl.core.errors import KevoError
from kevo_repl.core.history import HISTORY_ID_BYTES
from kevo_repl.node.local_state import STORE_FILE
from kevo_repl.progress import ProgressBar
from kevo_repl.wire import pb
from kevo_repl.wire.history import chain_from_wire

__all__ = ["BACKUP_FILE", "backup", "check_not_a_backup", "restore"]

BACKUP_FILE = "BACKUP.json"


def backup(client: Client, out: Path, progress: bool = False) -> dict[str, Any]:
    """Copy ``client``'s node into the new directory ``out``; returns the manifest."""
    if out.exists() and any(out.iterdir()):
        raise KevoError(f"{out} exists and is not empty: a backup goes into a new directory")
    status = client.status_message()
    out.mkdir(parents=True, exist_ok=True)
    writer = StateStore.begin_bootstrap(out / STORE_FILE)
    started = time.monotonic()
    last: pb.BootstrapChunk | None = None
    bar = ProgressBar(f"backup of {client.node}", 1.0) if progress else None
    try:
        for chunk in client.snapshot_stream(backup=True):
            writer.add(list(chunk.keys), list(chunk.values))
            last = chunk
            if bar is not None:
                bar.update(chunk.progress, _detail(chunk, writer.keys_added, started))
        if last is None or not last.is_last:
            raise KevoError(f"the backup stream from {client.node} ended early")
        history_id = last.history_id or status.history_id  # an empty store has none yet
        writer.finish(last.snapshot_lsn, history_id)
        check_finished(bootstrap_path(out / STORE_FILE))
        os.rename(bootstrap_path(out / STORE_FILE), out / STORE_FILE)
    except BaseException:
        writer.abort()
        shutil.rmtree(out, ignore_errors=True)  # a failed backup leaves nothing behind
        raise
    finally:
        if bar is not None:
            bar.close()
    chain = chain_from_wire(status.history)
    if last.snapshot_lsn and chain.at(last.snapshot_lsn) != history_id:  # a promotion between
        shutil.rmtree(out, ignore_errors=True)
        raise KevoError(f"{client.node} changed history during the backup: run it again")
    save_chain(out, chain)
    manifest = {
        "source": client.node,
        "source_id": status.node_id,
        "lsn": last.snapshot_lsn,
        "history_id": history_id.hex(),
        "history": chain.describe(),
        "keys": writer.keys_added,
        "seconds": round(time.monotonic() - started, 3),
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / BACKUP_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_path(out)
    return manifest


def restore(backup_dir: Path, data: Path, new_history: bool) -> dict[str, Any]:
    """Copy a backup into the new data directory ``data``; ``new_history``: fork a history
    of its own at the backup's LSN, to run it as a primary."""
    manifest = read_manifest(backup_dir)
    if data.exists() and any(data.iterdir()):
        raise KevoError(f"{data} exists and is not empty: restore into a new directory")
    shutil.copytree(backup_dir, data, dirs_exist_ok=True)
    if new_history:
        chain = load_chain(data)
        if chain is None:
            raise KevoError(f"{backup_dir} has no HISTORY: not a kevo-repl backup")
        chain = chain.extend(os.urandom(HISTORY_ID_BYTES), int(manifest["lsn"]))
        save_chain(data, chain)
        save_own_history(data, chain.current)
        (data / BACKUP_FILE).unlink()  # a primary of its own history now, no longer a copy
        manifest = {**manifest, "new_history": chain.current.hex()}
    fsync_path(data)
    return manifest


def read_manifest(backup_dir: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((backup_dir / BACKUP_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise KevoError(
            f"{backup_dir} is not a kevo-repl backup (no readable {BACKUP_FILE})"
        ) from exc
    return manifest


def check_not_a_backup(data: Path) -> None:
    """A primary refuses a backup restored without a history of its own."""
    if (data / BACKUP_FILE).exists():
        m = read_manifest(data)
        raise KevoError(
            f"{data} is a backup of {m.get('source')} at LSN {m.get('lsn')} (history "
            f"{m.get('history_id')}): as a primary it would write that history's next LSNs "
            "a second time. Run `kevo-repl restore --from DIR --data NEW --new-history` for a "
            "primary, or start it as a replica of the group"
        )


def _detail(chunk: pb.BootstrapChunk, keys: int, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    total = f"/{chunk.total_keys}" if chunk.total_keys else ""
    return f"{keys}{total} keys  {keys / elapsed:,.0f} keys/s  LSN {chunk.snapshot_lsn}"
