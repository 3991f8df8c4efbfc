"""A replica's records: its upstream's, appended byte for byte to its own WAL, applied, synced.

The ``Follower`` decides; this carries its actions out, in order. A drain's records are
appended to the WAL as received (the same bytes, served on to this node's followers),
applied in one transaction per history, then *visible*: published and served by WalSync.
They are *durable* (what this node acks) once an fdatasync on a helper thread covers them:
at once while the upstream says writes wait for acks, else within ``--lazy-sync-ms``. A
bootstrap installs a snapshot and starts the WAL afresh past it; a diverged tail is set
aside (``tail_aside.py``). Drains are timed for ``--metrics-port`` like group commits.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import zmq

from kevo_repl.adapters.clock import monotonic_ms, monotonic_s
from kevo_repl.adapters.security import ClientCurve
from kevo_repl.adapters.state_lmdb import Batch
from kevo_repl.core.errors import KevoError, ProtocolError, StorageError
from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import (
    Action,
    ApplyRecord,
    BeginBootstrap,
    DiscardTail,
    FollowerConfig,
    InstallBootstrap,
    Reconnect,
    RewindStore,
    SaveChain,
    Status,
    WriteChunk,
)
from kevo_repl.core.registry import WaitResult
from kevo_repl.node.bootstrap_copy import BootstrapCopy
from kevo_repl.node.config import POLL_MS
from kevo_repl.node.stats import DrainTimes
from kevo_repl.node.tail_aside import set_aside_tail
from kevo_repl.node.upstream_events import UpstreamEvents
from kevo_repl.node.upstream_link import Decoded, UpstreamLink
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["CRASH_AFTER_APPEND_ENV", "UpstreamSource"]

STORAGE_RETRY_MS = 1000
LAZY_SYNC_BYTES = 4 * 1024 * 1024  # or once this much is unsynced
CRASH_AFTER_APPEND_ENV = "KEVO_CRASH_AFTER_WAL_APPEND"  # an LSN: die once it is logged


class UpstreamSource:
    role: int = pb.ROLE_REPLICA
    writes_waiting = False  # no writes here: this node's followers sync and ack on a timer

    def __init__(self, node: Node, upstream: str, known_primary: str = "") -> None:
        self.node = node
        config = node.config
        store = node.store
        self.follower = Follower(
            FollowerConfig(
                replica_id=config.node_id,
                address=node.address,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                primary_timeout_ms=config.primary_timeout_ms,
                request_timeout_ms=config.request_timeout_ms,
                backoff_max_ms=config.backoff_max_ms,
                allow_bootstrap=config.allow_bootstrap,
                allow_unrelated_history=config.allow_unrelated_history,
                bootstrap_chunk_bytes=config.bootstrap_chunk_bytes,
            ),
            applied_lsn=store.applied_lsn,
            durable_lsn=min(store.applied_lsn, node.wal.durable_lsn),
            history_id=store.history_id or b"",
            chain=node.state.chain,
            serve_from_lsn=node.state.consistent_at,  # a rewind not yet replayed past
        )
        curve = None
        if node.security is not None and config.keys_dir is not None:
            curve = ClientCurve.from_dir(config.keys_dir, config.own_key_name, config.upstream_key)
        self.link = UpstreamLink(
            node.ctx,
            upstream,
            config.limits,
            curve,
            config.node_id,
            node.address,
            node.log,
            config.compression,
        )
        self.link.upstream_info.primary = known_primary  # until the upstream says
        self.link.received_lsn = lambda: node.wal.last_lsn
        self.events = UpstreamEvents(node.log, self.link)  # logged once per cause
        self._to_apply: list[Decoded] = []
        self._unsynced: list[tuple[int, int]] = []  # LSN ranges written here, not yet durable
        self._drains = DrainTimes(node.stats)  # appended, not yet published: for metrics
        self._visible = self.follower.durable_lsn
        self._sync: tuple[Future[int], int] | None = None
        self._unsynced_since_ms = 0  # when the oldest record not yet syncing was appended
        self._unsynced_bytes = 0
        self._last_ack_ms = 0
        self._lazy_ms = config.lazy_sync_ms
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="wal-sync")
        self._copy = BootstrapCopy(node)
        self._crash_at = int(os.environ.get(CRASH_AFTER_APPEND_ENV, "0"))  # fault tests only
        self.run(self.follower.start(monotonic_ms()))

    # ---- the node's questions ----------------------------------------------------------------

    @property
    def visible_lsn(self) -> int:
        return self._visible

    @property
    def blocked(self) -> bool:
        return False

    @property
    def upstream(self) -> str:
        return self.link.upstream

    @property
    def primary(self) -> str:
        """Where writes go: the primary at the top of our upstream's line."""
        return self.link.upstream_info.primary or self.link.upstream

    def sockets(self) -> list[zmq.Socket[bytes]]:
        return [self.link.sub, self.link.dealer]

    def read_fence(self, key: bytes) -> int:
        if not self.follower.consistent:
            msg = "this node is copying its upstream's data; it serves reads once consistent"
            raise WireError(msg, pb.ERROR_UNAVAILABLE)
        return 0

    def queue_write(self, peer: bytes, req: pb.Request, kind: str) -> bool:
        msg = f"this node is a replica; send writes to the primary at {self.primary}"
        serving = self.node.serving
        serving.send_error(peer, req.request_id, pb.ERROR_NOT_PRIMARY, msg, primary=self.primary)
        return False

    def released(self, waits: list[WaitResult]) -> None:
        return None  # only a primary has writes waiting for followers

    def describe(self, status: pb.StatusResponse) -> None:
        f = self.follower
        status.status = f.status.value  # type: ignore[assignment]
        status.primary = self.primary
        status.upstream = self.upstream
        status.bootstrap_progress = f.bootstrap_progress
        status.error_message = f.error_message
        status.bootstraps = f.counters.bootstraps
        status.catchups = f.counters.catchups
        status.gaps = f.counters.gaps
        status.peers.extend(self.link.peers)
        heard = self.link.heard
        status.upstream_lsn = max(f.primary_lsn, heard.primary_lsn)
        status.write_lag_s = heard.write_lag_s
        status.flush_lag_s = heard.flush_lag_s
        status.replay_lag_s = heard.replay_lag_s
        status.compression = self.link.codec
        status.upstream_wire_bytes = self.link.wire_bytes
        status.upstream_raw_bytes = self.link.raw_bytes
        cause = self.events.unreachable
        if not cause and f.status in (Status.CONNECTING, Status.DISCONNECTED):
            cause = self.link.diagnose(0)[0]  # before the first timeout: what is known now
            cause = "" if cause == "no answer" else cause
        if cause:
            status.upstream_problem = f"upstream unreachable: {cause}"

    # ---- each turn ---------------------------------------------------------------------------

    def on_ready(self, ready: dict[Any, int]) -> None:
        limit = self.node.config.drain_max
        link = self.link
        if link.sub in ready:
            link.drain(link.sub, self.follower, self.run, self._bad_input, limit)
        if link.dealer in ready:  # not the one a reconnect while draining the stream replaced
            link.drain(link.dealer, self.follower, self.run, self._bad_input, limit)
        self.flush()

    def turn(self, now_ms: int) -> None:
        self._finish_sync(now_ms)
        if self._sync is None and self._unsynced and self._sync_due(now_ms):
            self._start_sync()
        if self.follower.ack_due and now_ms - self._last_ack_ms >= self._lazy_ms:
            self._ack(now_ms)  # lazily, or what no sync will ack (a bootstrap installed)

    def due_in_ms(self, now_ms: int) -> int:
        """How soon ``turn`` has timed work: a lazy sync or ack (the loop's poll timeout)."""
        due = POLL_MS  # a finished sync wakes the loop itself
        if self._unsynced and self._sync is None and not self.link.writes_waiting:
            due = min(due, self._unsynced_since_ms + self._lazy_ms - now_ms)
        if self.follower.ack_due:
            due = min(due, self._last_ack_ms + self._lazy_ms - now_ms)
        return max(0, due)

    def _sync_due(self, now_ms: int) -> bool:
        """At once while writes wait for acks; otherwise once the oldest unsynced record is
        ``--lazy-sync-ms`` old or LAZY_SYNC_BYTES are unsynced (fewer fdatasyncs and acks)."""
        return (
            self.link.writes_waiting
            or now_ms - self._unsynced_since_ms >= self._lazy_ms
            or self._unsynced_bytes >= LAZY_SYNC_BYTES
        )

    def _ack(self, now_ms: int) -> None:
        self._last_ack_ms = now_ms  # also when none is due or possible: the timer's next turn
        self.run(self.follower.take_ack())

    def tick(self, now_ms: int) -> None:
        self.run(self.follower.tick(now_ms))

    def _bad_input(self, event: str, exc: ProtocolError) -> None:
        self.node.requests.refusals.refused(event, monotonic_ms(), error=str(exc))

    # ---- carrying out the follower's actions -------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        follower = self.follower
        for action in actions:
            if isinstance(action, ApplyRecord):
                self._to_apply.append(self.link.decoded_of(action.first_lsn, action.record))
            elif isinstance(action, Reconnect):
                self.flush()
                self.events.reconnecting(action.reason, self.node.config.primary_timeout_ms)
                self.link.reconnect()
                self.node.sockets_changed()
            elif isinstance(action, SaveChain):
                self.flush()
                self._storage(lambda a=action: self.node.state.save_chain(a.chain))
            elif isinstance(
                action, BeginBootstrap | WriteChunk | InstallBootstrap | DiscardTail | RewindStore
            ):
                self.flush()
                self._storage(lambda a=action: self._storage_step(a))
            else:
                if self.node.wal.failed:  # a request means a new attempt: recover the WAL
                    self._storage(self.node.state.reopen_wal)
                self.link.send(action)
            if follower.status == Status.ERROR and self._to_apply:
                self._to_apply.clear()
        self.events.log(self.follower.drain_events())

    def flush(self) -> None:
        """Append queued records to the WAL, start the fdatasync that will make them durable
        when it is due, apply them (one transaction per history) and publish them."""
        if not self._to_apply:
            self.link.decoded.clear()
            self.link.compressed.clear()
            return
        queued, self._to_apply = self._to_apply, []
        compressed, self.link.compressed = self.link.compressed, {}  # to pass on as received
        self.link.decoded.clear()
        node = self.node
        wal, store = node.wal, node.store
        started = monotonic_s()
        try:
            for _first, last, batch, record in queued:
                if last > wal.last_lsn:  # a store that failed to apply may have it logged
                    wal.append_record(record, batch.history_id)
            if self._crash_at and wal.last_lsn >= self._crash_at:
                os._exit(70)  # fault tests: die between the WAL append and the store apply
        except KevoError as exc:
            self._storage_failed(str(exc))
            return
        if not self._unsynced:
            self._unsynced_since_ms = monotonic_ms()
        self._unsynced += [(first, last) for first, last, _b, _r in queued]
        self._unsynced_bytes += sum(len(r) for _f, _l, _b, r in queued)
        if self._sync_due(monotonic_ms()):
            self._start_sync()  # the fdatasync overlaps the store apply below
        try:
            groups: list[tuple[bytes, list[Batch]]] = []
            for first, last, batch, _record in queued:
                if not groups or groups[-1][0] != batch.history_id:
                    groups.append((batch.history_id, []))
                groups[-1][1].append((first, last, batch.ops, batch.keys, batch.values))
            applying = monotonic_s()
            for history, batches in groups:
                store.apply_many(batches, history, new_history=history != store.history_id)
        except KevoError as exc:
            first_failed = queued[0][0]  # logged, not applied: never made visible
            self._unsynced = [r for r in self._unsynced if r[1] < first_failed]
            self._storage_failed(str(exc))
            return
        entries = sum(last - first + 1 for first, last, _b, _r in queued)
        self._drains.applied(queued[-1][1], entries, started, applying)
        # Visible once applied: our upstream published each record only once its root had it
        # durable, so what we hand on cannot be lost by the group, only by us (and then
        # fetched again). What we ack as durable waits for our own fdatasync.
        ready = [(first, last, record) for first, last, _b, record in queued]
        self._visible = ready[-1][1]
        self.node.stream.publish(ready, monotonic_ms(), compressed)
        self._drains.published(self._visible)

    def _start_sync(self) -> None:
        if self._sync is not None or not self._unsynced:
            return
        future = self._syncer.submit(self.node.stats.timed_sync(self.node.wal.sync))
        future.add_done_callback(lambda _: self.node.wake())
        self._sync = (future, self._unsynced[-1][1])
        self._unsynced_bytes = 0
        self._unsynced_since_ms = monotonic_ms()  # for records appended from now on

    def _finish_sync(self, now: int, wait: bool = False) -> None:
        if self._sync is None or not (wait or self._sync[0].done()):
            return
        future, _target = self._sync
        self._sync = None
        try:
            durable = future.result()
        except StorageError as exc:
            self._storage_failed(f"fdatasync failed: {exc}")
            return
        synced = sum(1 for r in self._unsynced if r[1] <= durable)
        self._unsynced = self._unsynced[synced:]
        self.follower.durable(durable)
        if self.link.writes_waiting:  # a write on the primary may wait for this very ack
            self._ack(now)
            self._start_sync()

    # ---- storage steps -----------------------------------------------------------------------

    def _storage(self, step: Any) -> None:
        try:
            step()
        except (KevoError, ValueError) as exc:
            self._storage_failed(str(exc))

    def _storage_step(self, action: Action) -> None:
        node = self.node
        if isinstance(action, DiscardTail):
            self._visible = min(self._visible, action.after_lsn)
            self.run(self.follower.on_tail_set_aside(set_aside_tail(node, action)))
        elif isinstance(action, RewindStore):
            self._finish_sync(monotonic_ms(), wait=True)
            node.state.save_consistent_at(action.consistent_at)  # first: a restart must wait
            node.store.rewind(action.puts, action.lsn, action.history_id)
            node.state.reset_wal(action.lsn + 1, action.history_id or node.wal.history_id)
            self._log_restarted(action.lsn)
        elif isinstance(action, BeginBootstrap):
            self._copy.begin()
        elif isinstance(action, WriteChunk):
            self._copy.add(action.keys, action.values, self.follower.bootstrap_progress)
        elif isinstance(action, InstallBootstrap):
            self._copy.finish(action)
            self._finish_sync(monotonic_ms(), wait=True)
            self._copy.install(action)
            self._log_restarted(action.snapshot_lsn)

    def _log_restarted(self, lsn: int) -> None:
        """The WAL starts afresh after ``lsn`` (a rewind, a bootstrap): nothing is pending."""
        self._unsynced.clear()
        self._drains.clear()
        self._visible = lsn

    def _storage_failed(self, message: str) -> None:
        node = self.node
        node.log.error("storage_failed", error=message)
        self._to_apply.clear()
        store = node.store
        self.run(
            self.follower.storage_failed(
                message, store.applied_lsn, STORAGE_RETRY_MS, store.history_id or b""
            )
        )

    def close(self) -> None:
        self.flush()
        self._finish_sync(monotonic_ms(), wait=True)
        self._start_sync()  # what lazy syncing left: durable before a stop or a promotion
        self._finish_sync(monotonic_ms(), wait=True)
        self._syncer.shutdown(wait=True)
        self._copy.abort()
        self.link.close()
