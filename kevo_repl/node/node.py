"""One kind of node: a WAL, a store and a history chain, serving the same replication side.

Every node binds PUB on P and ROUTER on P+1 and answers Register, Heartbeat/Ack, WalSync,
Bootstrap, Status, Digest and reads from its own WAL and store (``serving_requests.py``),
so any node can be followed: a replica can serve replicas (cascading). What differs is the
*source* of its records:

* ``WriteSource`` (a primary): client writes, group-committed into its WAL;
* ``UpstreamSource`` (a replica): its upstream's records, appended byte for byte to its WAL,
  applied, and synced.

A primary publishes a record on its PUB, serves it by WalSync and counts it for its
followers only once it is durable in its WAL; a replica once it is applied (it was durable
at the root already), while what it acks as durable waits for its own fdatasync. One
thread runs the loop, poll plus non-blocking drains; fdatasyncs run on helper threads that
wake the loop through a pipe. A promotion or a repoint swaps the source and keeps everything else.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import zmq

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.adapters.security import ServerSecurity
from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.adapters.wal_files import WriteAheadLog
from kevo_repl.core.errors import StorageError
from kevo_repl.core.registry import Registry, WaitResult
from kevo_repl.core.retention import plan_retention
from kevo_repl.logs import get_logger
from kevo_repl.node.bootstrap_stream import BootstrapSessions
from kevo_repl.node.checkpointer import Checkpointer
from kevo_repl.node.config import NodeConfig
from kevo_repl.node.local_state import open_local_state
from kevo_repl.node.serving import ServingSockets
from kevo_repl.node.serving_requests import ServingRequests
from kevo_repl.node.stats import NodeStats
from kevo_repl.node.stream_out import Counters, StreamOut
from kevo_repl.wire import pb
from kevo_repl.wire.backend import slow_backend_warning

__all__ = ["Node", "Source"]


class Source(Protocol):
    """Where a node's records come from: its own client writes, or its upstream."""

    role: int  # pb.ROLE_PRIMARY or pb.ROLE_REPLICA

    @property
    def visible_lsn(self) -> int: ...  # published: a primary's durable, a replica's applied
    @property
    def blocked(self) -> bool: ...  # stop draining requests (writes at their cap)
    def sockets(self) -> list[zmq.Socket[bytes]]: ...
    def on_ready(self, ready: dict[Any, int]) -> None: ...
    def turn(self, now_ms: int) -> None: ...
    def due_in_ms(self, now_ms: int) -> int: ...  # when turn has timed work: poll no longer
    def tick(self, now_ms: int) -> None: ...
    def queue_write(self, peer: bytes, req: pb.Request, kind: str) -> bool: ...
    def read_fence(self, key: bytes) -> int: ...
    def released(self, waits: list[WaitResult]) -> None: ...  # writes enough followers have
    @property
    def writes_waiting(self) -> bool: ...  # said in beacons: followers sync and ack at once
    def describe(self, status: pb.StatusResponse) -> None: ...
    def close(self) -> None: ...


class Node:
    """Owns the data directory and the sockets; ``run()`` until ``stop()``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        role = "primary" if config.is_primary else "replica"
        self.log: Any = get_logger(node=config.node_id, role=role)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._closed = False
        self._pollers_dirty = True
        self.failure = ""  # why the node stopped itself, if it did
        self.upstream = config.upstream  # "" while this node is the primary
        self.fenced = ""  # a primary that accepts no writes now: why (node/roles.py)
        self.fence_primary = ""  # and where the writes should go, if known
        # Set by an etcd agent (kevo_repl/ha/): writes are accepted only before this
        # monotonic ms (its leader lease, less a margin); None: no lease governs this node.
        self.writes_until_ms: int | None = None
        self.leader_hint = ""  # the agent's leader, where refused writes are sent
        self.coordinator = ""  # the agent's view, for Status ("" without an agent)
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.retention_held_by = ""  # the follower whose position keeps the oldest segment
        self.counters = Counters()
        self.stream = StreamOut(self)
        self.stats = NodeStats()  # histograms, counters, rates (metrics, Status)
        self._last_tick_ms = self._last_retain_ms = 0
        self.state = open_local_state(Path(config.data_dir), role, config.segment_size, self.log)
        self.followers = Registry(
            stale_after_ms=config.stale_after_ms,
            forget_after_ms=config.forget_after_ms,
            max_waiters=config.max_waiting_writes,
        )
        self.sessions = BootstrapSessions(self.state.store)
        self.sessions.on_compressed = self.counters.compressed
        self.checkpointer = Checkpointer(self.state.store, config.checkpoint_interval_ms, self.log)
        self.address = config.advertise or f"{config.bind}:{config.port}"
        self._wake_r, self._wake_w = os.pipe()  # a helper thread's "a sync is done"
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.security: ServerSecurity | None = None
        try:
            if config.keys_dir is not None:
                self.security = ServerSecurity(self.ctx, config.keys_dir, config.own_key_name)
            self.serving = ServingSockets(
                self.ctx,
                config.bind,
                config.port,
                pub_hwm=config.pub_hwm,
                max_request_bytes=config.limits.max_request_bytes,
                max_stream_record_bytes=config.limits.max_stream_record_bytes,
                security=self.security,
                log=self.log,
                stats=self.stats,
            )
            self.requests = ServingRequests(self)
            self.source: Source = self._make_source(self.upstream)
        except BaseException:
            self._close_parts(clean=True)
            raise
        self.followers.note_commit(self.source.visible_lsn, monotonic_ms())
        warning = slow_backend_warning()
        if warning:
            self.log.warning("slow_protobuf_backend", message=warning)
        self.log.info(
            "started",
            pub=f"{config.bind}:{config.port}",
            router=f"{config.bind}:{config.port + 1}",
            upstream=config.upstream or None,
            history=self.state.chain.describe(),
            lsn=self.store.applied_lsn,
            retained_from_lsn=self.wal.retained_from_lsn,
            fsync=config.fsync,
        )

    def _make_source(self, upstream: str) -> Source:
        if not upstream:
            from kevo_repl.node.write_source import WriteSource

            return WriteSource(self)
        from kevo_repl.node.upstream_source import UpstreamSource

        return UpstreamSource(self, upstream)

    # ---- what everything reads -----------------------------------------------------------

    @property
    def wal(self) -> WriteAheadLog:
        return self.state.wal

    @property
    def store(self) -> StateStore:
        return self.state.store

    @property
    def visible_lsn(self) -> int:
        """The last LSN followers and readers may see: durable here, applied, published."""
        return self.source.visible_lsn

    @property
    def role(self) -> int:
        return self.source.role

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its turn and close (safe from a signal handler)."""
        self._stop.set()

    def reload_keys(self) -> None:
        """Ask the loop to re-read the authorized keys (safe from a SIGHUP handler)."""
        self._reload.set()

    def fail(self, reason: str) -> None:
        """Stop the node because it cannot go on safely; ``failure`` says why."""
        if not self.failure:
            self.failure = reason
            self.log.critical("node_failed", error=reason)
        self._stop.set()

    def sockets_changed(self) -> None:
        """A source replaced a socket (a reconnect): poll the new set next turn."""
        self._pollers_dirty = True

    def lease_writes(self, until_ms: int | None, leader: str = "") -> None:
        """From the agent's thread: accept writes until ``until_ms`` only (two plain stores;
        the loop compares the deadline with its clock before each write it accepts)."""
        self.leader_hint = leader
        self.writes_until_ms = until_ms

    def call_in_loop(self, fn: Callable[[], Any]) -> Future[Any]:
        """From another thread: run ``fn`` on the loop's thread between two turns (cancelled
        if the loop has ended)."""
        future: Future[Any] = Future()
        if self._closed:
            future.cancel()
            return future
        self._calls.put((fn, future))
        self.wake()
        return future

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # the caller sees it (a refused promote, say)
                future.set_exception(exc)

    def wake(self) -> None:
        """From a helper thread: a sync finished; wake the loop's poll."""
        with contextlib.suppress(BlockingIOError):  # full: wake-ups are pending anyway
            os.write(self._wake_w, b"\0")

    def run(self) -> None:
        """The loop, until ``stop()`` or a fatal error (``failure`` then says why)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.reload_keys())
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.serving.reload_keys()  # the ROUTER may have been rebound
                    self._pollers_dirty = True
                if self._pollers_dirty:
                    poller, blocked_poller = self._pollers()
                    self._pollers_dirty = False
                timeout = 0 if self.sessions.has_credit() else self.source.due_in_ms(monotonic_ms())
                # Backpressure: while the pending writes are at their byte cap, requests
                # stay in the sockets (TCP pushes back on the writers) until a group is done.
                use = blocked_poller if self.source.blocked else poller
                ready = dict(use.poll(timeout))
                if self.serving.router in ready:
                    self._drain()
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                self._run_calls()
                now = monotonic_ms()
                self.source.on_ready(ready)
                self.source.turn(now)
                self.sessions.pump(self.serving.reply, self.config.bootstrap_chunks_per_turn, now)
                self.requests.send_digests()
                self._timers(now)
        finally:
            self.close()

    def _pollers(self) -> tuple[zmq.Poller, zmq.Poller]:
        poller, blocked = zmq.Poller(), zmq.Poller()
        poller.register(self.serving.router, zmq.POLLIN)
        for p in (poller, blocked):
            p.register(self._wake_r, zmq.POLLIN)
            for sock in self.source.sockets():
                p.register(sock, zmq.POLLIN)
        return poller, blocked

    def _drain(self) -> None:
        for _ in range(self.config.drain_max):
            got = self.serving.recv()
            if got is None:
                return
            self.requests.handle(*got)
            if self.source.blocked:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while True:  # whoever waits on a call the loop will not run now: do not wait on
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        try:
            self.source.close()
        finally:
            self._close_parts(clean=not self.failure)
            self.log.info("stopped", lsn=self.wal.last_lsn)

    def _close_parts(self, *, clean: bool) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.sessions.close_all()
        if hasattr(self, "requests"):
            self.requests.close()
        self.checkpointer.close()
        if hasattr(self, "serving"):
            self.serving.close()
        elif self.security is not None:
            self.security.close()
        self.ctx.destroy(0)
        self.state.close(clean=clean)

    # ---- timers ------------------------------------------------------------------------------

    def _timers(self, now: int) -> None:
        if now - self.stream.last_publish_ms >= self.config.beacon_interval_ms:
            self.stream.beacon(now)
        if now - self._last_tick_ms >= 50:
            self._last_tick_ms = now
            self.requests.tick(now)
            self.source.tick(now)
            for s in self.sessions.expire(now):
                self.log.warning("bootstrap_abandoned", session=s.session_id)
        if now - self._last_retain_ms >= self.config.checkpoint_interval_ms:
            self._last_retain_ms = now
            self._retain()

    def _retain(self) -> None:
        """Drop the WAL segments no follower needs (``core/retention.py``)."""
        config = self.config
        holder = self.followers.retention_holder()
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
            behind = [r.replica_id for r in self.followers.replicas() if r.durable_lsn + 1 < after]
            self.log.warning(
                "wal_cap_passed_replicas",
                retained_from_lsn=after,
                replicas=behind,
                retention_max_bytes=config.retention_max,
            )
