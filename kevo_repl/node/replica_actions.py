"""Carries out the follower's actions on real sockets and the real store, in order.

Also the decode step in front of the follower: stream frames and replies are parsed and every
record's crc is verified here, so the follower only ever sees whole, checked records. Records
to apply are queued and written in one LMDB transaction per drain (``flush``); anything that
must not be reordered with them (bootstrap steps) flushes first.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from kevo_repl.adapters.state_lmdb import BootstrapWriter, StateStore, install_bootstrap
from kevo_repl.core.errors import KevoError, ProtocolError, StorageError
from kevo_repl.core.follower_types import (
    Action,
    ApplyRecord,
    BeginBootstrap,
    InstallBootstrap,
    Reconnect,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendWalSync,
    WriteChunk,
)
from kevo_repl.core.record import verify_wire_record
from kevo_repl.wire import pb
from kevo_repl.wire.batch import decode_batch
from kevo_repl.wire.envelope import (
    TOPIC_WAL,
    decode_beacon,
    decode_response,
    split_stream_frame,
)

if TYPE_CHECKING:
    from kevo_repl.node.replica_node import ReplicaNode

__all__ = ["ActionRunner"]

STORAGE_RETRY_MS = 1000
_Batch = tuple[int, int, pb.WalBatch, bytes]
_WARNINGS = frozenset({"disconnected", "storage_failed", "foreign_history", "request_refused"})


class ActionRunner:
    def __init__(self, node: ReplicaNode) -> None:
        self.node = node
        self._ids = itertools.count(1)
        self._pending_id = 0  # request id of the follower's one pending request
        self._read_token = 0  # of the upstream's last large reply: echoed as proof we read it
        self._decoded: dict[int, _Batch] = {}
        self._to_apply: list[_Batch] = []
        self._writer: BootstrapWriter | None = None
        self._progress_logged = 0  # tenths of the current bootstrap already logged

    # ---- input -------------------------------------------------------------------------------

    def on_stream_frame(self, frame: bytes, now: int) -> None:
        follower = self.node.follower
        topic, rest = split_stream_frame(frame)
        if topic == TOPIC_WAL:
            first, last, history, record = self._decode_record(bytes(rest))
            self.run(follower.on_record(first, last, history, record))
        else:
            beacon = decode_beacon(rest)
            self.run(follower.on_beacon(beacon.history_id, beacon.last_lsn))

    def on_reply(self, frame: bytes, now: int) -> None:
        follower = self.node.follower
        resp = decode_response(frame)
        if resp.read_token:
            self._read_token = resp.read_token
        kind = resp.WhichOneof("body")
        mine = resp.request_id == self._pending_id
        if kind == "heartbeat":
            self.run(follower.on_heartbeat_reply(resp.heartbeat.primary_lsn))
        elif kind == "register" and mine:
            r = resp.register
            self.run(
                follower.on_register_reply(
                    r.primary_lsn, r.retained_from_lsn, r.history_id, r.bootstrap_required
                )
            )
        elif kind == "wal_sync" and mine:
            try:
                records = [self._decode_record(rec) for rec in resp.wal_sync.records]
            except ProtocolError as exc:
                self.run(follower.on_request_refused("BAD_RECORD", str(exc)))
                return
            self.run(follower.on_wal_sync_reply(records, resp.wal_sync.primary_lsn))
        elif kind == "bootstrap" and mine:
            c = resp.bootstrap
            self.run(
                follower.on_bootstrap_chunk(
                    c.session_id,
                    c.seq,
                    list(c.keys),
                    list(c.values),
                    c.progress,
                    c.is_last,
                    c.snapshot_lsn,
                    c.history_id,
                )
            )
        elif kind == "error":
            self._on_error(resp.error, mine)

    def _on_error(self, err: pb.Error, mine: bool) -> None:
        follower = self.node.follower
        name = pb.ErrorCode.Name(err.code) if err.code in pb.ErrorCode.values() else str(err.code)
        if err.code == pb.ERROR_NOT_REGISTERED:
            self.run(follower.on_not_registered())
        elif err.code == pb.ERROR_TOO_OLD and mine:
            self.run(follower.on_too_old(err.retained_from_lsn))
        elif mine:
            self.run(follower.on_request_refused(name, err.message))
        elif err.code == pb.ERROR_CREDIT:
            pass  # a credit grant that crossed the last chunk: the session is already over
        else:
            self.node.log.warning("primary_error", code=name, message=err.message)

    def _decode_record(self, record: bytes) -> tuple[int, int, bytes, bytes]:
        decoded = verify_wire_record(record)
        batch = decode_batch(decoded.payload)
        if len(batch.keys) != decoded.last_lsn - decoded.first_lsn + 1:
            raise ProtocolError(
                f"record {decoded.first_lsn}..{decoded.last_lsn} holds {len(batch.keys)} entries"
            )
        self._decoded[decoded.first_lsn] = (decoded.first_lsn, decoded.last_lsn, batch, record)
        return decoded.first_lsn, decoded.last_lsn, batch.history_id, record

    # ---- actions -----------------------------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        node = self.node
        follower = node.follower
        for action in actions:
            if isinstance(action, ApplyRecord):
                self._to_apply.append(self._decoded.pop(action.first_lsn))
            elif isinstance(action, SendAck):
                self._send(
                    pb.Request(
                        ack=pb.AckRequest(
                            replica_id=node.config.replica_id,
                            applied_lsn=action.applied_lsn,
                            durable_lsn=action.durable_lsn,
                        )
                    ),
                    pending=False,
                )
            elif isinstance(action, SendHeartbeat):
                self._send(
                    pb.Request(
                        heartbeat=pb.HeartbeatRequest(
                            replica_id=node.config.replica_id,
                            status=action.status.value,  # type: ignore[arg-type]
                            applied_lsn=action.applied_lsn,
                            durable_lsn=action.durable_lsn,
                            error_message=action.error_message,
                            bootstrap_progress=action.bootstrap_progress,
                        )
                    ),
                    pending=False,
                )
            elif isinstance(action, SendRegister):
                self._send(
                    pb.Request(
                        register=pb.RegisterRequest(
                            replica_id=node.config.replica_id,
                            address=node.address,
                            role=pb.ROLE_REPLICA,
                            history_id=action.history_id,
                            applied_lsn=action.applied_lsn,
                        )
                    ),
                    pending=True,
                )
            elif isinstance(action, SendWalSync):
                self.flush()
                self._send(
                    pb.Request(
                        wal_sync=pb.WalSyncRequest(
                            from_lsn=action.from_lsn, max_bytes=action.max_bytes
                        )
                    ),
                    pending=True,
                )
            elif isinstance(action, SendBootstrap):
                self._send(
                    pb.Request(
                        bootstrap=pb.BootstrapRequest(
                            session_id=action.session_id,
                            credit=action.credit,
                            chunk_bytes=action.chunk_bytes,
                        )
                    ),
                    pending=action.session_id == 0,
                )
            elif isinstance(action, Reconnect):
                self.flush()
                node.reconnect(action.reason)
                self._read_token = 0  # a new connection owes nothing
            else:
                self.flush()
                self._storage_step(action)
            if follower.status.name == "ERROR" and self._to_apply:
                self._to_apply.clear()
        self._log_events()

    def _storage_step(self, action: Action) -> None:
        node = self.node
        try:
            if isinstance(action, BeginBootstrap):
                if node.store.applied_lsn:  # never silently: say what is discarded
                    node.log.warning(
                        "bootstrap_replaces_data",
                        keys=node.store.key_count,
                        applied_lsn=node.store.applied_lsn,
                        history_id=(node.store.history_id or b"").hex(),
                    )
                if self._writer is not None:
                    self._writer.abort()
                self._writer = StateStore.begin_bootstrap(node.store_path)
                self._progress_logged = 0
            elif isinstance(action, WriteChunk):
                if self._writer is None:
                    raise StorageError("bootstrap chunk without a bootstrap in progress")
                self._writer.add(action.keys, action.values)
                self._log_progress()
            elif isinstance(action, InstallBootstrap):
                if self._writer is None:
                    raise StorageError("bootstrap install without a bootstrap in progress")
                self._writer.finish(action.snapshot_lsn, action.history_id)
                self._writer = None
                node.store = install_bootstrap(node.store)
        except (KevoError, ValueError) as exc:
            self._storage_failed(str(exc))

    def _log_progress(self) -> None:
        """One line per tenth of a bootstrap, not one per chunk."""
        tenth = int(self.node.follower.bootstrap_progress * 10)
        if tenth > self._progress_logged:
            self._progress_logged = tenth
            keys = self._writer.keys_added if self._writer else 0
            self.node.log.info("bootstrap_progress", progress=tenth / 10, keys=keys)

    def flush(self) -> None:
        """Apply queued records in one transaction, re-publish them, then ack (coalesced)."""
        if not self._to_apply:
            self._decoded.clear()
            return
        batch, self._to_apply = self._to_apply, []
        node = self.node
        try:
            node.store.apply_many(
                [(first, last, b.ops, b.keys, b.values) for first, last, b, _ in batch],
                node.follower.history_id,
            )
        except KevoError as exc:
            self._storage_failed(str(exc))
            return
        finally:
            self._decoded.clear()
        for _, _, _, record in batch:
            node.publish(record)
        self.run(node.follower.take_ack())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _storage_failed(self, message: str) -> None:
        node = self.node
        node.log.error("storage_failed", error=message)
        self._to_apply.clear()
        follower = node.follower
        store = node.store
        self.run(
            follower.storage_failed(
                message, store.applied_lsn, STORAGE_RETRY_MS, store.history_id or b""
            )
        )

    def _send(self, req: pb.Request, *, pending: bool) -> None:
        req.request_id = next(self._ids)
        req.read_token = self._read_token
        if pending:
            self._pending_id = req.request_id
        self.node.send_request(req.SerializeToString())

    def _log_events(self) -> None:
        log = self.node.log
        for event, fields in self.node.follower.drain_events():
            if event in _WARNINGS:
                log.warning(event, **fields)
            else:
                log.info("status_changed" if event == "status" else event, **fields)
