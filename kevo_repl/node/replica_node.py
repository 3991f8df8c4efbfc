"""The replica's driver loop: SUB + DEALER to the primary, its own PUB + ROUTER for readers.

The ``Follower`` decides; this loop only moves bytes and carries out its actions in order.
Records arriving in one drain are applied in ONE LMDB transaction (``apply_many``), then
re-published on the replica's own PUB (so ``tail`` works against a replica) and acknowledged
with one coalesced Ack. The store is checkpointed on a timer, which advances ``durable_lsn``.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from kevo_repl.adapters.clock import monotonic_ms, wall_us
from kevo_repl.adapters.security import ServerSecurity, apply_client_keys, load_public_key
from kevo_repl.adapters.zmq_io import (
    Prepare,
    SocketOptions,
    connect_socket,
    recv_frames_nowait,
    send_nowait,
)
from kevo_repl.core.errors import ProtocolError
from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import FollowerConfig
from kevo_repl.logs import get_logger
from kevo_repl.node.checkpointer import Checkpointer
from kevo_repl.node.local_state import open_replica_state
from kevo_repl.node.refusals import RefusalLog
from kevo_repl.node.replica_actions import ActionRunner
from kevo_repl.node.replica_requests import ReplicaRequests
from kevo_repl.node.serving import ServingSockets
from kevo_repl.wire.backend import slow_backend_warning
from kevo_repl.wire.batch import DEFAULT_LIMITS, WireLimits
from kevo_repl.wire.envelope import TOPIC_BEACON, TOPIC_WAL, encode_beacon

__all__ = ["DEALER_RCVHWM", "SUB_RCVHWM", "ReplicaConfig", "ReplicaNode"]

SUB_RCVHWM = 1024  # stream frames buffered from the upstream (256 MiB at most)
DEALER_RCVHWM = 16  # replies buffered from the upstream (it sends few at a time)


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    data_dir: Path
    primary_host: str
    primary_port: int
    replica_id: str
    bind: str = "127.0.0.1"
    port: int = 7110
    advertise: str = ""
    heartbeat_interval_ms: int = 300
    primary_timeout_ms: int = 3000
    request_timeout_ms: int = 3000
    backoff_max_ms: int = 5000
    allow_bootstrap: bool = True
    allow_unrelated_history: bool = False  # --reinit
    bootstrap_chunk_bytes: int = 256 * 1024
    checkpoint_interval_ms: int = 200
    beacon_interval_ms: int = 200
    limits: WireLimits = DEFAULT_LIMITS
    pub_hwm: int = 256  # per subscriber: 256 x 256 KiB stream records = 64 MiB at most
    keys_dir: Path | None = None  # CURVE: DIR/<replica_id>.key_secret, DIR/authorized_keys
    primary_key: Path | None = None  # the primary's public key (default DIR/primary.key)
    drain_max: int = 4096

    @property
    def primary(self) -> str:
        return f"{self.primary_host}:{self.primary_port}"


class ReplicaNode:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.log: Any = get_logger(node=config.replica_id, role="replica")
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._closed = False
        self.failure = ""  # why the node stopped itself, if it did
        self.refusals = RefusalLog(self.log)
        self.state = open_replica_state(Path(config.data_dir), self.log)
        self.store = self.state.store
        self.store_path = self.store.path
        self.address = config.advertise or f"{config.bind}:{config.port}"
        self.follower = Follower(
            FollowerConfig(
                replica_id=config.replica_id,
                address=self.address,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                primary_timeout_ms=config.primary_timeout_ms,
                request_timeout_ms=config.request_timeout_ms,
                backoff_max_ms=config.backoff_max_ms,
                allow_bootstrap=config.allow_bootstrap,
                allow_unrelated_history=config.allow_unrelated_history,
                bootstrap_chunk_bytes=config.bootstrap_chunk_bytes,
            ),
            applied_lsn=self.store.applied_lsn,
            durable_lsn=self.store.durable_lsn,
            history_id=self.store.history_id or b"",
        )
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        limits = config.limits
        # What the upstream can make us hold: SUB_RCVHWM stream frames of at most the stream
        # limit, DEALER_RCVHWM replies of at most max_reply_bytes (docs/security.md).
        self._sub_opts = SocketOptions(
            rcvhwm=SUB_RCVHWM, max_msg_bytes=limits.max_stream_frame_bytes
        )
        self._opts = SocketOptions(rcvhwm=DEALER_RCVHWM, max_msg_bytes=limits.max_reply_bytes)
        self._client_keys: Prepare | None = None
        security = None
        try:
            if config.keys_dir is not None:
                security = ServerSecurity(self._ctx, config.keys_dir, config.replica_id)
                primary_key = load_public_key(config.primary_key or config.keys_dir / "primary.key")
                keys = security.keys
                self._client_keys = lambda sock: apply_client_keys(sock, keys, primary_key)
            self.sub = connect_socket(
                self._ctx,
                zmq.SUB,
                config.primary_host,
                config.primary_port,
                self._sub_opts,
                self._client_keys,
            )
            self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_WAL)
            self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_BEACON)
            self.dealer = self._new_dealer()
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
            self.state.close(clean=True)
            self._ctx.destroy(0)
            raise
        self._poller = zmq.Poller()
        for sock in (self.sub, self.dealer, self.serving.router):
            self._poller.register(sock, zmq.POLLIN)
        self.actions = ActionRunner(self)
        self.requests = ReplicaRequests(self)
        self.checkpointer = Checkpointer(self.store, config.checkpoint_interval_ms, self.log)
        self._last_beacon_ms = 0
        warning = slow_backend_warning()
        if warning:
            self.log.warning("slow_protobuf_backend", message=warning)
        self.log.info(
            "started",
            primary=config.primary,
            pub=f"{config.bind}:{config.port}",
            router=f"{config.bind}:{config.port + 1}",
            applied_lsn=self.store.applied_lsn,
            history_id=(self.store.history_id or b"").hex(),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def reload_keys(self) -> None:
        self._reload.set()

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.reload_keys())
        now = monotonic_ms()
        self.actions.run(self.follower.start(now))
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self._poller.unregister(self.serving.router)
                    self.serving.reload_keys()
                    self._poller.register(self.serving.router, zmq.POLLIN)
                ready = dict(self._poller.poll(20))
                if self.sub in ready:
                    self._drain_stream()
                if self.dealer in ready:
                    self._drain_replies()
                self.actions.flush()
                if self.serving.router in ready:
                    self._drain_clients()
                self._timers(monotonic_ms())
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.checkpointer.close()
        self.requests.digests.close()
        self.actions.close()
        self.sub.close(0)
        self.dealer.close(0)
        self.serving.close()
        self._ctx.term()
        self.state.close(clean=not self.failure)
        self.log.info("stopped", applied_lsn=self.follower.applied_lsn)

    def reconnect(self, reason: str) -> None:
        """A fresh DEALER: whatever the old one had in flight is dropped with it."""
        self._poller.unregister(self.dealer)
        self.dealer.close(0)
        self.dealer = self._new_dealer()
        self._poller.register(self.dealer, zmq.POLLIN)
        self.log.info("reconnecting", reason=reason)

    # ---- the loop's parts --------------------------------------------------------------------

    def _drain_stream(self) -> None:
        for _ in range(self.config.drain_max):
            frames = recv_frames_nowait(self.sub, 1)
            if frames is None:
                return
            if len(frames) != 1:
                continue
            try:
                self.actions.on_stream_frame(frames[0], monotonic_ms())
            except ProtocolError as exc:
                self._bad_input("bad_stream_frame", exc)

    def _drain_replies(self) -> None:
        for _ in range(self.config.drain_max):
            frames = recv_frames_nowait(self.dealer, 1)
            if frames is None:
                return
            if len(frames) != 1:
                continue
            try:
                self.actions.on_reply(frames[0], monotonic_ms())
            except ProtocolError as exc:
                self._bad_input("bad_reply", exc)

    def _bad_input(self, event: str, exc: ProtocolError) -> None:
        self.refusals.refused(event, monotonic_ms(), error=str(exc))

    def _drain_clients(self) -> None:
        for _ in range(self.config.drain_max):
            got = self.serving.recv()
            if got is None:
                return
            self.requests.handle(*got)

    def _timers(self, now: int) -> None:
        self.actions.run(self.follower.tick(now))
        self.follower.durable(self.store.durable_lsn)  # reset by a bootstrap install too
        self.actions.run(self.follower.take_ack())
        if now - self._last_beacon_ms >= self.config.beacon_interval_ms:
            self._last_beacon_ms = now
            beacon = encode_beacon(self.follower.history_id, self.follower.applied_lsn, wall_us())
            self.serving.pub.send(beacon, zmq.DONTWAIT)
        self.requests.reads.release(now)
        self.requests.send_digests()
        self.refusals.flush(now)

    def _new_dealer(self) -> zmq.Socket[bytes]:
        return connect_socket(
            self._ctx,
            zmq.DEALER,
            self.config.primary_host,
            self.config.primary_port + 1,
            self._opts,
            self._client_keys,
        )

    def send_request(self, frame: bytes) -> bool:
        return send_nowait(self.dealer, [frame])

    def publish(self, record: bytes) -> None:
        """Re-publish an applied record; one over the stream's limit is announced by a
        beacon instead, and followers fetch it by WalSync."""
        if not self.serving.publish_record(record):
            self._last_beacon_ms = -(10**12)  # at the next timer turn
