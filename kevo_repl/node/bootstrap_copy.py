"""A replica's bootstrap into a fresh store beside its own, installed only when complete.

The follower decides (``BeginBootstrap``, ``WriteChunk``, ``InstallBootstrap``); this carries
it out: chunks go into a new LMDB environment next to the live one, which keeps serving reads
until the snapshot is whole, and then replaces it in one step. A bootstrap that is begun again
or abandoned leaves nothing behind. Progress is logged once per tenth, not once per chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.adapters.state_lmdb import BootstrapWriter, StateStore
from kevo_repl.core.errors import StorageError
from kevo_repl.core.follower_types import InstallBootstrap

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["BootstrapCopy"]


class BootstrapCopy:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._writer: BootstrapWriter | None = None
        self._progress_logged = 0

    def begin(self) -> None:
        node = self._node
        if node.store.applied_lsn:  # never silently: say what is discarded
            node.log.warning(
                "bootstrap_replaces_data",
                keys=node.store.key_count,
                applied_lsn=node.store.applied_lsn,
                history_id=(node.store.history_id or b"").hex(),
            )
        self.abort()
        self._writer = StateStore.begin_bootstrap(node.store.path)
        self._progress_logged = 0

    def add(self, keys: list[bytes], values: list[bytes], progress: float) -> None:
        if self._writer is None:
            raise StorageError("bootstrap chunk without a bootstrap in progress")
        self._writer.add(keys, values)
        tenth = int(progress * 10)
        if tenth > self._progress_logged:
            self._progress_logged = tenth
            self._node.log.info(
                "bootstrap_progress", progress=tenth / 10, keys=self._writer.keys_added
            )

    def finish(self, action: InstallBootstrap) -> None:
        """The snapshot is whole: made durable in its own environment (not yet live)."""
        if self._writer is None:
            raise StorageError("bootstrap install without a bootstrap in progress")
        self._writer.finish(action.snapshot_lsn, action.history_id)
        self._writer = None

    def install(self, action: InstallBootstrap) -> None:
        """Replace the live store with the snapshot; the WAL starts right after it (the old
        log does not lead to it)."""
        node = self._node
        node.sessions.close_all()  # our own followers' snapshots of the old store
        node.store.replace_with_bootstrap()
        node.state.save_consistent_at(0)  # a snapshot is a state of its history
        node.state.reset_wal(action.snapshot_lsn + 1, action.history_id)
        node.followers.note_commit(action.snapshot_lsn, monotonic_ms())

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
