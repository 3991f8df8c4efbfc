"""The primary's driver loop: PUB on P, ROUTER on P+1, one thread, poll + non-blocking drain.

Each turn: drain the ROUTER (bounded), answer reads at once and queue writes; finish the
group whose fdatasync completed (apply to LMDB, publish, reply) and start the next one (seal,
WAL write, fdatasync on a helper thread that wakes the loop when done); pump bootstrap chunks
against credit; run timers (beacons, staleness, waiters, retention). Nothing here blocks on
a peer: every send is DONTWAIT, so a slow or dead replica never stalls writes or the other
replicas.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from kevo_repl.adapters.clock import monotonic_ms, wall_us
from kevo_repl.adapters.security import ServerSecurity
from kevo_repl.adapters.wal_files import WriteAheadLog
from kevo_repl.core.errors import StorageError
from kevo_repl.core.registry import Registry
from kevo_repl.core.retention import plan_retention
from kevo_repl.logs import get_logger
from kevo_repl.node.bootstrap_stream import BootstrapSessions
from kevo_repl.node.checkpointer import Checkpointer
from kevo_repl.node.group_commit import RECORD_OVERHEAD_BYTES, GroupCommitter
from kevo_repl.node.local_state import open_primary_state
from kevo_repl.node.primary_requests import PrimaryRequests
from kevo_repl.node.serving import ServingSockets
from kevo_repl.wire import pb
from kevo_repl.wire.backend import slow_backend_warning
from kevo_repl.wire.batch import DEFAULT_LIMITS, WireLimits
from kevo_repl.wire.envelope import encode_beacon

__all__ = ["PrimaryConfig", "PrimaryNode"]


def _drain_pipe(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PrimaryConfig:
    data_dir: Path
    bind: str = "127.0.0.1"
    port: int = 7100
    fsync: str = "always"
    retention_bytes: int = 1024 * MIB  # the floor: kept whatever the replicas need
    retention_max_bytes: int = 0  # the hard cap (0: 4 x retention_bytes)
    segment_bytes: int = 0  # 0: derived from retention_bytes
    # Between the floor and the cap the WAL keeps what known replicas still need (their
    # durable position, a bootstrap's snapshot); past the cap a replica bootstraps once.
    advertise: str = ""  # HOST:PORT clients and replicas reach us at (default bind:port)
    node_id: str = "primary"
    beacon_interval_ms: int = 200
    stale_after_ms: int = 1500
    checkpoint_interval_ms: int = 1000
    pub_hwm: int = 256  # per subscriber: 256 x 256 KiB stream records = 64 MiB at most
    max_waiting_writes: int = 100_000  # writes parked until enough replicas apply them
    limits: WireLimits = DEFAULT_LIMITS
    keys_dir: Path | None = None  # CURVE: DIR/<key_name>.key_secret + DIR/authorized_keys
    key_name: str = "primary"
    drain_max: int = 4096
    bootstrap_chunks_per_turn: int = 4

    @property
    def retention_max(self) -> int:
        return self.retention_max_bytes or 4 * self.retention_bytes

    @property
    def segment_size(self) -> int:
        """Segments small enough that retention by whole segments keeps about N bytes."""
        if self.segment_bytes:
            return self.segment_bytes
        return max(64 * 1024, min(64 * MIB, self.retention_bytes // 8))


@dataclass(slots=True)
class _Timers:
    last_publish_ms: int = 0
    last_tick_ms: int = 0
    last_retain_ms: int = 0


@dataclass(slots=True)
class Counters:
    batches_published: int = 0
    entries_published: int = 0
    bytes_published: int = 0
    catchups_served: int = 0
    bootstraps_served: int = 0
    records_by_walsync_only: int = 0  # over the stream's frame limit: not published


class PrimaryNode:
    """Owns the WAL, the store and the sockets; ``run()`` until ``stop()``."""

    def __init__(self, config: PrimaryConfig) -> None:
        self.config = config
        self.log: Any = get_logger(node=config.node_id, role="primary")
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._closed = False
        self.failure = ""  # why the node stopped itself, if it did
        self.retention_held_by = ""  # the replica whose position keeps the oldest segment
        self.counters = Counters()
        self._timers = _Timers()
        self.state = open_primary_state(Path(config.data_dir), config.segment_size, self.log)
        assert self.state.wal is not None  # a primary's state always has its WAL
        self.wal: WriteAheadLog = self.state.wal
        self.store = self.state.store
        self.registry = Registry(
            stale_after_ms=config.stale_after_ms, max_waiters=config.max_waiting_writes
        )
        self.registry.note_commit(self.wal.last_lsn, monotonic_ms())
        limits = config.limits
        self.committer = GroupCommitter(
            self.wal,
            self.store,
            wall_us,
            ack_before_sync=config.fsync != "always",
            record_target_bytes=limits.max_stream_record_bytes - RECORD_OVERHEAD_BYTES,
        )
        self.committer.committed_lsn = self.wal.last_lsn
        try:
            replayed = self.committer.catch_up_store()
        except BaseException:
            self.committer.close()
            self.state.close(clean=False)
            raise
        if replayed:
            self.log.info(
                "recovered",
                replayed_entries=replayed,
                lsn=self.wal.last_lsn,
                rebuilt_store=self.state.rebuilt,
            )
        self.checkpointer = Checkpointer(self.store, config.checkpoint_interval_ms, self.log)
        self.sessions = BootstrapSessions(self.store, self.wal.history_id)
        self.address = config.advertise or f"{config.bind}:{config.port}"
        self._wake_r, self._wake_w = os.pipe()  # the sync thread's "a group is durable"
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        security = None
        try:
            if config.keys_dir is not None:
                security = ServerSecurity(self._ctx, config.keys_dir, config.key_name)
            self.serving = ServingSockets(
                self._ctx,
                config.bind,
                config.port,
                pub_hwm=config.pub_hwm,
                max_request_bytes=config.limits.max_request_bytes,
                max_stream_record_bytes=config.limits.max_stream_record_bytes,
                security=security,
                log=self.log,
            )
        except Exception:
            if security is not None:
                security.close()
            self.checkpointer.close()
            self.committer.close()
            self.state.close(clean=True)
            self._ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self.requests = PrimaryRequests(self)
        warning = slow_backend_warning()
        if warning:
            self.log.warning("slow_protobuf_backend", message=warning)
        self.log.info(
            "started",
            pub=f"{config.bind}:{config.port}",
            router=f"{config.bind}:{config.port + 1}",
            history_id=self.wal.history_id.hex(),
            lsn=self.wal.last_lsn,
            retained_from_lsn=self.wal.retained_from_lsn,
            fsync=config.fsync,
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its turn and close (safe from a signal handler)."""
        self._stop.set()

    def reload_keys(self) -> None:
        """Ask the loop to re-read the authorized keys (safe from a SIGHUP handler)."""
        self._reload.set()

    def run(self) -> None:
        """The loop, until ``stop()`` or a fatal error (``failure`` then says why)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.reload_keys())
        poller, wake_only = self._pollers()
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.serving.reload_keys()
                    poller, wake_only = self._pollers()  # the ROUTER may have been rebound
                timeout = 0 if self.sessions.has_credit() else 20
                # Backpressure: while the pending writes are at their byte cap, leave requests
                # in the sockets (TCP pushes back on the writers) until a group is durable.
                backlogged = self.committer.backlogged
                ready = dict((wake_only if backlogged else poller).poll(timeout))
                if self.serving.router in ready:
                    self._drain()
                if self._wake_r in ready:
                    _drain_pipe(self._wake_r)
                self._finish_groups()  # frees the slot the next group needs
                self._start_group()
                now = monotonic_ms()
                self.sessions.pump(self.serving.reply, self.config.bootstrap_chunks_per_turn, now)
                self.requests.send_digests()
                self._timers_due(now)
        finally:
            self.close()

    def _pollers(self) -> tuple[zmq.Poller, zmq.Poller]:
        poller, wake_only = zmq.Poller(), zmq.Poller()
        poller.register(self.serving.router, zmq.POLLIN)
        for p in (poller, wake_only):
            p.register(self._wake_r, zmq.POLLIN)  # a group became durable
        return poller, wake_only

    @property
    def committed_lsn(self) -> int:
        """The last LSN that is durable, applied and published: what the world may see."""
        return self.committer.committed_lsn

    def fail(self, reason: str) -> None:
        """Stop the node because it cannot go on safely; ``run`` returns, ``failure`` says why."""
        if not self.failure:
            self.failure = reason
            self.log.critical("node_failed", error=reason)
        self._stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.failure:
                self._finish_groups(wait=True)
                while self.committer.pending and not self.failure:
                    self._start_group()
                    self._finish_groups(wait=True)
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.sessions.close_all()
            self.requests.digests.close()
            self.checkpointer.close()
            self.committer.close()
            self.serving.close()
            self._ctx.term()
            self.state.close(clean=not self.failure)
            self.log.info("stopped", lsn=self.wal.last_lsn)

    # ---- the loop's parts --------------------------------------------------------------------

    def _drain(self) -> None:
        for _ in range(self.config.drain_max):
            got = self.serving.recv()
            if got is None:
                return
            if self.requests.handle(*got):
                self._start_group()
            if self.committer.backlogged:
                return

    def _start_group(self) -> None:
        try:
            flight = self.committer.start(self._wake)
        except StorageError as exc:
            self._wal_failed("wal_write_failed", exc)
            return
        if flight is not None and self.committer.ack_before_sync:
            self.requests.reply_written(flight.committed())

    def _finish_groups(self, wait: bool = False) -> None:
        try:
            done = self.committer.finish_ready(wait)
        except StorageError as exc:
            self._wal_failed("wal_sync_failed", exc)
            return
        for flight in done:
            now = monotonic_ms()
            c = self.counters
            unpublished = 0
            for record in flight.records:
                appended = record.appended
                if self.serving.publish_record(appended.record):
                    c.batches_published += 1
                    c.entries_published += appended.last_lsn - appended.first_lsn + 1
                    c.bytes_published += len(appended.record) + 1
                else:  # too big for the stream: followers fetch it by WalSync
                    unpublished += 1
            self.registry.note_commit(flight.last_lsn, now)
            if unpublished:  # a beacon tells followers at once that there is more to fetch
                c.records_by_walsync_only += unpublished
                self._beacon(now)
            else:
                self._timers.last_publish_ms = now
            self.requests.reply_committed(
                flight.committed(), now, acked=self.committer.ack_before_sync
            )

    def _wal_failed(self, event: str, exc: StorageError) -> None:
        """The WAL refused a write or a sync: the records written may or may not survive a
        restart, so every writer waiting is told the outcome is unknown, and the node stops
        (the WAL refuses all further work; a restart recovers it, as PostgreSQL does)."""
        msg = (
            f"the WAL failed ({exc}); this write may or may not have been committed: read it "
            "back once the primary is restarted"
        )
        writes = [w for f in self.committer.drop_in_flight() for w in f.writes()]
        writes += self.committer.take_pending()
        self.requests.fail_writes(writes, pb.ERROR_OUTCOME_UNKNOWN, msg)
        self.log.error(event, error=str(exc), writes_with_unknown_outcome=len(writes))
        self.fail(f"{event}: {exc}")

    def _wake(self) -> None:
        """Called on the sync thread when a group is durable: wake the loop's poll."""
        with contextlib.suppress(BlockingIOError):  # full: wake-ups are pending anyway
            os.write(self._wake_w, b"\0")

    def _beacon(self, now: int) -> None:
        self._timers.last_publish_ms = now
        beacon = encode_beacon(
            self.wal.history_id, self.committed_lsn, wall_us(), self.wal.retained_from_lsn
        )
        self.serving.pub.send(beacon, zmq.DONTWAIT)

    def _timers_due(self, now: int) -> None:
        t = self._timers
        if now - t.last_publish_ms >= self.config.beacon_interval_ms:
            self._beacon(now)
        if now - t.last_tick_ms >= 50:
            t.last_tick_ms = now
            self.requests.tick(now)
            for s in self.sessions.expire(now):
                self.log.warning("bootstrap_abandoned", session=s.session_id)
        if now - t.last_retain_ms >= self.config.checkpoint_interval_ms:
            t.last_retain_ms = now
            self._repair_and_retain()

    def _repair_and_retain(self) -> None:
        if self.committer.store_error:
            try:
                self.committer.catch_up_store()
                self.log.info("store_recovered", lsn=self.store.applied_lsn)
            except StorageError as exc:
                self.log.error("store_apply_failed", error=str(exc))
                return
        config = self.config
        holder = self.registry.retention_holder()
        plan = plan_retention(
            self.wal.spans(),
            holder[0] if holder else None,
            config.retention_bytes,
            config.retention_max,
        )
        self.retention_held_by = holder[1] if plan.held and holder else ""
        if not plan.drop:
            return
        try:
            # Segments about to go must be in the store on disk first: sync it now.
            self.store.checkpoint()
            after = self.wal.drop_oldest(plan.drop)
        except StorageError as exc:
            self.log.error("retention_failed", error=str(exc))
            return
        self.log.info("wal_retained", retained_from_lsn=after, wal_bytes=self.wal.size_bytes)
        if plan.capped:
            behind = [r.replica_id for r in self.registry.replicas() if r.durable_lsn + 1 < after]
            self.log.warning(
                "wal_cap_passed_replicas",
                retained_from_lsn=after,
                replicas=behind,
                retention_max_bytes=config.retention_max,
            )
