"""Store checkpoints on a helper thread, so an LMDB sync never stalls a driver loop.

Commits to LMDB do not sync (the WAL is the primary's durability point; a replica reports a
separate durable LSN). A checkpoint is ``env.sync`` of everything committed so far: tens of
milliseconds under load, which on the driver thread showed up directly as replication lag.
py-lmdb releases the GIL while syncing, so the loop runs on meanwhile.
"""

from __future__ import annotations

import threading
from typing import Any

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.core.errors import StorageError

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(self, store: StateStore, interval_ms: int, log: Any) -> None:
        self._store = store
        self._interval_s = interval_ms / 1000
        self._log = log
        self._stop = threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._store.checkpoint()  # the store's durable_lsn is the one truth
                self.error = ""
            except StorageError as exc:
                if self._stop.is_set():
                    return
                if str(exc) != self.error:
                    self._log.error("checkpoint_failed", error=str(exc))
                self.error = str(exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
