"""Copying data wholesale: a bootstrap from a snapshot, or a rewind of a diverged tail.

Both end in the follower's usual state (SYNCING from the copy's LSN); see ``core/rewind.py``
for why a rewind ends at the upstream's exact state and ``core/bootstrap_receiver.py`` for
the snapshot stream's order and credit.
"""

from __future__ import annotations

from kevo_repl.core.bootstrap_receiver import BootstrapReceiver, ChunkVerdict
from kevo_repl.core.follower_state import FollowerCore
from kevo_repl.core.follower_types import (
    Action,
    BeginBootstrap,
    DiscardTail,
    InstallBootstrap,
    Reconnect,
    RewindStore,
    SendBootstrap,
    SendRewind,
    Status,
    WriteChunk,
)
from kevo_repl.core.rewind import MAX_REWIND_KEYS, RewindReceiver

__all__ = ["FollowerCopy"]


class FollowerCopy(FollowerCore):
    __slots__ = ()

    def on_too_old(self, retained_from_lsn: int) -> list[Action]:
        if self._pending != "wal_sync":
            return []
        self._pending = ""
        self._heard(self.primary_lsn)
        self._note("too_old", applied_lsn=self.applied_lsn, retained_from_lsn=retained_from_lsn)
        return self._begin_bootstrap("WAL too old")

    def on_bootstrap_chunk(
        self,
        session_id: int,
        seq: int,
        keys: list[bytes],
        values: list[bytes],
        progress: float,
        is_last: bool,
        snapshot_lsn: int,
        history_id: bytes,
    ) -> list[Action]:
        if self.status != Status.BOOTSTRAPPING or self._pending != "bootstrap":
            return []
        self._heard(self.primary_lsn)
        verdict = self._boot.accept(session_id, seq, progress, is_last)
        if verdict is ChunkVerdict.BROKEN:
            self._note("bootstrap_broken", expected_seq=self._boot.next_seq, got_seq=seq)
            return [Reconnect("bootstrap stream out of order"), *self._begin_bootstrap("restart")]
        self._pending_deadline_ms = self._now_ms + self.config.request_timeout_ms
        out: list[Action] = [WriteChunk(keys, values)]
        if verdict is ChunkVerdict.LAST:
            self._pending = ""
            self.history_id = history_id
            self.applied_lsn = snapshot_lsn
            self.durable_lsn = snapshot_lsn
            self.serve_from_lsn = 0  # a snapshot is a state of its history
            self._heard(snapshot_lsn)
            self._note("bootstrap_done", snapshot_lsn=snapshot_lsn)
            self._chain_before_install = self.chain
            out.append(InstallBootstrap(snapshot_lsn, history_id))
            out += self._adopt(self.upstream_chain)
            self._move(Status.SYNCING)
            return out + self._wal_sync()
        grant = self._boot.grant()
        if grant:
            session = self._boot.session_id
            out.append(SendBootstrap(session, grant, self.config.bootstrap_chunk_bytes))
        return out

    def _begin_bootstrap(self, why: str) -> list[Action]:
        if not self.config.allow_bootstrap:
            self.error_message = f"a bootstrap is needed ({why}) but --no-bootstrap forbids it"
            self._pending = ""
            self._retry_at_ms = 0
            self._note("bootstrap_refused", reason=why, applied_lsn=self.applied_lsn)
            self._move(Status.ERROR)
            return []
        self.counters.bootstraps += 1
        self._note("bootstrap_start", reason=why, applied_lsn=self.applied_lsn)
        if self.status != Status.BOOTSTRAPPING:
            self._move(Status.BOOTSTRAPPING)
        credit = self.config.bootstrap_credit
        self._boot = BootstrapReceiver(credit)
        self._request("bootstrap")
        return [BeginBootstrap(), SendBootstrap(0, credit, self.config.bootstrap_chunk_bytes)]

    # ---- rewind ---------------------------------------------------------------------------

    def _begin_rewind(self, shared_lsn: int, reason: str) -> list[Action]:
        """Set our tail past ``shared_lsn`` aside; the driver answers which keys it touched
        (``on_tail_set_aside``)."""
        self._note("diverged", shared_lsn=shared_lsn, applied_lsn=self.applied_lsn)
        self._rewind = RewindReceiver(shared_lsn, reason)
        return [DiscardTail(shared_lsn, self.applied_lsn)]

    def on_tail_set_aside(self, keys: list[bytes] | None) -> list[Action]:
        """The keys our discarded tail touched (None: the WAL no longer has all of it)."""
        r = self._rewind
        if r is None:
            return []
        if keys is None or len(set(keys)) > MAX_REWIND_KEYS:
            self._rewind = None
            count = "unknown" if keys is None else len(set(keys))
            return self._begin_bootstrap(f"diverged: {r.reason}; {count} keys to rewind")
        r.keys = sorted(set(keys))
        self.counters.rewinds += 1
        self._note("rewind_start", shared_lsn=r.shared_lsn, keys=len(r.keys))
        return self._next_rewind()

    def on_rewind_reply(
        self, snapshot_lsn: int, keys: list[bytes], values: list[bytes], found: list[bool]
    ) -> list[Action]:
        r = self._rewind
        if r is None or self._pending != "rewind":
            return []
        self._pending = ""
        self._heard(snapshot_lsn)
        if keys and snapshot_lsn < r.shared_lsn:  # the upstream went back (it lost a tail)
            self._rewind = None
            return self._disconnect(f"the rewind's answer at {snapshot_lsn} is before the fork")
        if not r.accept(snapshot_lsn, keys, values, found):
            self._rewind = None
            return self._begin_bootstrap(f"diverged: {r.reason}; the rewind could not finish")
        return self._next_rewind()

    def _next_rewind(self) -> list[Action]:
        r = self._rewind
        assert r is not None
        if not r.done:
            self._request("rewind")
            return [SendRewind(r.next_batch())]
        self._rewind = None
        history = self.upstream_chain.at(r.shared_lsn) if r.shared_lsn else b""
        self.applied_lsn = self.durable_lsn = r.shared_lsn
        self.history_id = history
        self.serve_from_lsn = r.snapshot_lsn
        self._note("rewound", lsn=r.shared_lsn, keys=len(r.puts), consistent_at=r.snapshot_lsn)
        out: list[Action] = [RewindStore(r.shared_lsn, history, r.puts, r.snapshot_lsn)]
        out += self._adopt(self.upstream_chain)
        self._move(Status.SYNCING)
        return out + self._wal_sync()
