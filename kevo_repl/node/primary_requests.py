"""What the primary answers on its ROUTER: replication requests, status, client reads/writes.

Every request is validated before it touches anything; a bad one gets an ``Error`` reply and
changes nothing, so a hostile or buggy peer can never stop the node, and an unexpected
failure while handling one request is logged and answered ``ERROR_INTERNAL``. Writes are only
queued here: ``GroupCommitter`` commits them and ``reply_committed`` answers, now or once
enough replicas have applied (``wait_replicas``). Large replies go through the serving
side's per-peer budget of unread bytes, so a peer that pipelines requests without reading
the answers cannot make the node queue them without bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.core.errors import StorageError, TooOldError
from kevo_repl.core.follower_types import Status
from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.core.record import peek_lsns
from kevo_repl.core.registry import (
    DuplicateReplicaError,
    ImpossiblePositionError,
    Registry,
    RegistryFullError,
    ReplicaState,
    WaitResult,
)
from kevo_repl.node.bootstrap_stream import SessionsFullError
from kevo_repl.node.digests import DigestQueue
from kevo_repl.node.group_commit import CommittedWrite, PendingWrite
from kevo_repl.node.parked_reads import MAX_WAIT_MS, ParkedReads
from kevo_repl.node.refusals import RefusalLog
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError, WireLimits, encode_single, parse_client_batch
from kevo_repl.wire.envelope import decode_request, encode_write_reply, error_response

if TYPE_CHECKING:
    from kevo_repl.node.primary_node import PrimaryNode

__all__ = ["PrimaryRequests", "replica_info"]

MIN_SYNC_BYTES = 64 * 1024
MAX_SYNC_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _WaitToken:
    peer: bytes
    request_id: int
    first_lsn: int
    last_lsn: int


def replica_info(r: ReplicaState, registry: Registry, now_ms: int) -> pb.ReplicaInfo:
    """A registry entry as the wire's ``ReplicaInfo`` (Status)."""
    return pb.ReplicaInfo(
        replica_id=r.replica_id,
        address=r.address,
        role=r.role,  # type: ignore[arg-type]
        status=r.status.value,  # type: ignore[arg-type]
        last_seen_ms=max(0, now_ms - r.last_seen_ms),
        applied_lsn=r.applied_lsn,
        durable_lsn=r.durable_lsn,
        lag_entries=registry.lag_entries(r),
        lag_ms=registry.lag_ms(r, now_ms),
        error_message=r.error_message,
        bootstraps=r.bootstraps,
        catchups=r.catchups,
        bootstrap_progress=r.bootstrap_progress,
    )


def _check_entry(key: bytes, value: bytes, limits: WireLimits) -> None:
    if not key:
        raise WireError("empty key")
    if len(key) > limits.max_key_bytes:
        msg = f"key of {len(key)} bytes, over the limit of {limits.max_key_bytes}"
        raise WireError(msg, pb.ERROR_TOO_LARGE)
    if len(value) > limits.max_value_bytes:
        msg = f"value of {len(value)} bytes, over the limit of {limits.max_value_bytes}"
        raise WireError(msg, pb.ERROR_TOO_LARGE)


class PrimaryRequests:
    def __init__(self, node: PrimaryNode) -> None:
        self.node = node
        serving = node.serving
        self.reads = ParkedReads(
            lambda: node.store,
            serving.reply_or_refuse,
            serving.send,
            node.config.limits.max_key_bytes,
        )
        self.digests = DigestQueue(lambda: node.store)
        self.refusals = RefusalLog(node.log)

    # ---- entry point -------------------------------------------------------------------------

    def handle(self, peer: bytes, frame: bytes, user: str = "") -> bool:
        """Answer or queue one request; True when a write group is full (commit now)."""
        node = self.node
        serving = node.serving
        try:
            req = decode_request(frame, node.config.limits)
        except WireError as exc:
            self._send(peer, error_response(0, exc.code, str(exc)))
            return False
        if req.read_token:
            serving.confirm(peer, req.read_token)
        kind = req.WhichOneof("body")
        rid = req.request_id
        now = monotonic_ms()
        if kind is None or not serving.allowed(user, kind):
            msg = f"this key may not send {kind} requests"
            self._send(peer, error_response(rid, pb.ERROR_UNAUTHORIZED, msg))
            return False
        try:
            return self._dispatch(peer, req, kind, now, user)
        except WireError as exc:
            self._send(peer, error_response(rid, exc.code, str(exc)))
        except StorageError as exc:
            node.log.error("request_failed", request=kind, error=str(exc))
            self._send(peer, error_response(rid, pb.ERROR_UNAVAILABLE, str(exc)))
        except Exception as exc:  # a bug must not stop the node for everyone: log it loudly
            node.log.exception("request_crashed", request=kind, error=repr(exc))
            self._send(peer, error_response(rid, pb.ERROR_INTERNAL, f"internal error: {exc!r}"))
        return False

    def _dispatch(self, peer: bytes, req: pb.Request, kind: str, now: int, user: str) -> bool:
        rid = req.request_id
        if kind in ("put", "delete", "batch"):
            return self._queue_write(peer, req, kind)
        if kind == "register":
            self._register(peer, rid, req.register, now, self.node.serving.key_name(user))
        elif kind == "get":
            at_lsn = self.node.committer.unapplied.get(req.get.key, 0)
            self.reads.get(peer, rid, req.get, now, at_lsn)
        elif kind == "heartbeat":
            self._heartbeat(peer, rid, req.heartbeat, now)
        elif kind == "ack":
            self._ack(peer, rid, req.ack, now)
        elif kind == "wal_sync":
            self._wal_sync(peer, rid, req.wal_sync, now)
        elif kind == "bootstrap":
            self._bootstrap(peer, rid, req.bootstrap, now)
        elif kind == "status":
            self._reply(peer, pb.Response(request_id=rid, status=self._status(now)))
        elif kind == "digest":
            self.digests.submit(peer, rid)
        return False

    # ---- writes ------------------------------------------------------------------------------

    def _queue_write(self, peer: bytes, req: pb.Request, kind: str) -> bool:
        node = self.node
        limits = node.config.limits
        body: pb.PutRequest | pb.DeleteRequest | pb.BatchRequest
        if kind == "batch":
            body = req.batch
            payload = body.batch
            batch = parse_client_batch(
                payload,
                max_key_bytes=limits.max_key_bytes,
                max_value_bytes=limits.max_value_bytes,
                max_entries=limits.max_entries,
            )
            ops: Sequence[int] = batch.ops
            keys: Sequence[bytes] = batch.keys
            values: Sequence[bytes] = batch.values
        else:  # one put or delete: checked and encoded directly, the common hot path
            body = req.put if kind == "put" else req.delete
            op = OP_PUT if kind == "put" else OP_DELETE
            key = body.key
            value = req.put.value if kind == "put" else b""
            _check_entry(key, value, limits)
            payload = encode_single(op, key, value)
            ops, keys, values = (op,), (key,), (value,)
        if len(payload) > limits.max_write_bytes:
            limit = limits.max_write_bytes
            msg = f"write of {len(payload)} bytes, over the record limit of {limit}"
            raise WireError(msg, pb.ERROR_TOO_LARGE)
        wait = min(body.wait_replicas, 1000)
        if wait:
            waiting = node.registry.waiters + node.committer.waiting_writes
            if waiting >= node.registry.max_waiters:
                raise WireError(
                    f"{waiting} writes already wait for replicas (the limit is "
                    f"{node.registry.max_waiters}); retry later or send fewer with wait_replicas",
                    pb.ERROR_UNAVAILABLE,
                )
        write = PendingWrite(
            peer,
            req.request_id,
            payload,
            len(keys),
            wait,
            min(body.timeout_ms or 1000, MAX_WAIT_MS),
            ops,
            keys,
            values,
        )
        return node.committer.add(write)

    def reply_written(self, committed: list[CommittedWrite]) -> None:
        """``--fsync interval``: answer writes that wait for no replica as soon as written."""
        for c in committed:
            w = c.write
            if not w.wait_replicas:
                self._send(w.peer, encode_write_reply(w.request_id, c.first_lsn, c.last_lsn))

    def reply_committed(self, committed: list[CommittedWrite], now: int, *, acked: bool) -> None:
        """Answer durable writes (``acked``: those without wait_replicas were answered)."""
        registry = self.node.registry
        for c in committed:
            w = c.write
            if w.wait_replicas:
                token = _WaitToken(w.peer, w.request_id, c.first_lsn, c.last_lsn)
                done = registry.wait_for(token, c.last_lsn, w.wait_replicas, now + w.timeout_ms)
                if done is not None:
                    self._answer_wait(done)
            elif not acked:
                self._send(w.peer, encode_write_reply(w.request_id, c.first_lsn, c.last_lsn))
        self.reads.release(now)

    def fail_writes(
        self, writes: list[PendingWrite], code: pb.ErrorCode.ValueType, msg: str
    ) -> None:
        for w in writes:
            self._send(w.peer, error_response(w.request_id, code, msg))

    def _answer_wait(self, done: WaitResult) -> None:
        token = done.token
        assert isinstance(token, _WaitToken)
        write = pb.WriteResponse(
            lsn=token.last_lsn,
            first_lsn=token.first_lsn,
            replicas_applied=done.replicas_applied,
            wait_timed_out=done.timed_out,
        )
        self._reply(token.peer, pb.Response(request_id=token.request_id, write=write))

    # ---- replication -------------------------------------------------------------------------

    def _register(
        self, peer: bytes, rid: int, reg: pb.RegisterRequest, now: int, key_name: str
    ) -> None:
        node = self.node
        if not reg.replica_id or len(reg.replica_id) > 256:
            raise WireError("register: replica_id must be 1..256 characters")
        if key_name and reg.replica_id != key_name:
            msg = f"this key belongs to replica {key_name!r}, not {reg.replica_id!r}"
            self._send(peer, error_response(rid, pb.ERROR_UNAUTHORIZED, msg))
            return
        try:
            node.registry.register(
                reg.replica_id, peer, reg.address[:512], reg.role, reg.applied_lsn, now
            )
        except DuplicateReplicaError as exc:
            self._send(peer, error_response(rid, pb.ERROR_DUPLICATE_REPLICA, str(exc)))
            return
        except RegistryFullError as exc:
            self._send(peer, error_response(rid, pb.ERROR_UNAVAILABLE, str(exc)))
            return
        wal = node.wal
        foreign = bool(reg.history_id) and reg.history_id != wal.history_id
        required = (
            foreign
            or reg.applied_lsn > node.committed_lsn
            or reg.applied_lsn + 1 < wal.retained_from_lsn
        )
        node.log.info(
            "replica_registered",
            replica_id=reg.replica_id,
            address=reg.address,
            applied_lsn=reg.applied_lsn,
            bootstrap_required=required,
        )
        resp = pb.RegisterResponse(
            primary_lsn=node.committed_lsn,
            retained_from_lsn=wal.retained_from_lsn,
            history_id=wal.history_id,
            bootstrap_required=required,
        )
        self._reply(peer, pb.Response(request_id=rid, register=resp))

    def _heartbeat(self, peer: bytes, rid: int, hb: pb.HeartbeatRequest, now: int) -> None:
        status = Status(hb.status) if hb.status in Status._value2member_map_ else Status.ERROR
        registry = self.node.registry
        try:
            r, done = registry.heartbeat(
                peer,
                status,
                hb.applied_lsn,
                hb.durable_lsn,
                hb.bootstrap_progress,
                hb.error_message[:1024],
                now,
            )
        except ImpossiblePositionError as exc:
            self._impossible(peer, rid, exc, now)
            return
        if r is None:
            self._send(peer, error_response(rid, pb.ERROR_NOT_REGISTERED, "register first"))
            return
        for d in done:
            self._answer_wait(d)
        resp = pb.HeartbeatResponse(
            primary_lsn=self.node.committed_lsn,
            lag_entries=registry.lag_entries(r),
            lag_ms=registry.lag_ms(r, now),
        )
        self._reply(peer, pb.Response(request_id=rid, heartbeat=resp))

    def _ack(self, peer: bytes, rid: int, ack: pb.AckRequest, now: int) -> None:
        try:
            r, done = self.node.registry.ack(peer, ack.applied_lsn, ack.durable_lsn, now)
        except ImpossiblePositionError as exc:
            self._impossible(peer, rid, exc, now)
            return
        if r is None:
            self._send(peer, error_response(rid, pb.ERROR_NOT_REGISTERED, "register first"))
        for d in done:
            self._answer_wait(d)

    def _impossible(self, peer: bytes, rid: int, exc: ImpossiblePositionError, now: int) -> None:
        """A forged or broken position: refused, logged (rate-limited), nothing changed."""
        r = self.node.registry.get(peer)
        who = r.replica_id if r is not None else peer.hex()
        self.refusals.refused("impossible_position", now, replica_id=who, error=str(exc))
        self._send(peer, error_response(rid, pb.ERROR_BAD_REQUEST, str(exc)))

    def _wal_sync(self, peer: bytes, rid: int, req: pb.WalSyncRequest, now: int) -> None:
        node = self.node
        wal = node.wal
        committed = node.committed_lsn  # records still syncing are not served yet
        if req.from_lsn < 1 or req.from_lsn > committed + 1:
            raise WireError(f"wal_sync: from_lsn {req.from_lsn} outside 1..{committed + 1}")
        room = node.serving.budget.room(peer)
        if room < MIN_SYNC_BYTES:
            msg = f"{node.serving.budget.unread_bytes(peer)} bytes of earlier replies are unread"
            raise WireError(msg, pb.ERROR_UNREAD_REPLIES)
        max_bytes = max(MIN_SYNC_BYTES, min(req.max_bytes or MAX_SYNC_BYTES, MAX_SYNC_BYTES, room))
        records: list[bytes] = []
        try:
            for record in wal.read_from(req.from_lsn, max_bytes):
                if peek_lsns(record)[1] > committed:
                    break
                records.append(record)
        except TooOldError:
            node.log.info("wal_sync_too_old", from_lsn=req.from_lsn)
            msg = f"LSN {req.from_lsn} was retained away; WAL starts at {wal.retained_from_lsn}"
            frame = error_response(
                rid, pb.ERROR_TOO_OLD, msg, retained_from_lsn=wal.retained_from_lsn
            )
            self._send(peer, frame)
            return
        if node.registry.get(peer) is not None:  # a replica, not a tail or a tool
            node.registry.note_catchup(peer, now)
            node.counters.catchups_served += 1
        resp = pb.WalSyncResponse(
            records=records,
            primary_lsn=committed,
            retained_from_lsn=wal.retained_from_lsn,
            history_id=wal.history_id,
        )
        node.serving.reply_or_refuse(peer, pb.Response(request_id=rid, wal_sync=resp))

    def _bootstrap(self, peer: bytes, rid: int, req: pb.BootstrapRequest, now: int) -> None:
        node = self.node
        if req.session_id:
            if not node.sessions.grant(peer, req.session_id, req.credit, now):
                raise WireError(f"bootstrap: unknown session {req.session_id}", pb.ERROR_CREDIT)
            return
        if node.registry.get(peer) is None:
            self._send(peer, error_response(rid, pb.ERROR_NOT_REGISTERED, "register first"))
            return
        try:
            session = node.sessions.start(peer, rid, req.credit, req.chunk_bytes, now)
        except SessionsFullError as exc:
            self._send(peer, error_response(rid, pb.ERROR_UNAVAILABLE, str(exc)))
            return
        node.registry.note_bootstrap(peer, session.snapshot.lsn, now)
        node.counters.bootstraps_served += 1
        node.log.info(
            "bootstrap_serving",
            session=session.session_id,
            snapshot_lsn=session.snapshot.lsn,
            keys=session.snapshot.key_count,
        )

    # ---- status and timers -------------------------------------------------------------------

    def _status(self, now: int) -> pb.StatusResponse:
        node = self.node
        reg = node.registry
        return pb.StatusResponse(
            role=pb.ROLE_PRIMARY,
            history_id=node.wal.history_id,
            lsn=node.committed_lsn,
            durable_lsn=node.wal.durable_lsn,
            retained_from_lsn=node.wal.retained_from_lsn,
            replicas=[replica_info(r, reg, now) for r in reg.replicas()],
            status=pb.STATUS_READY,
            node_id=node.config.node_id,
            primary=node.address,  # what this primary advertises to clients and replicas
            retention_held_by=node.retention_held_by,
            wal_bytes=node.wal.size_bytes,
        )

    def tick(self, now: int) -> None:
        stale, expired = self.node.registry.tick(now)
        for r in stale:
            self.node.log.warning("replica_disconnected", replica_id=r.replica_id)
        for d in expired:
            self._answer_wait(d)
        self.reads.release(now)
        self.refusals.flush(now)

    def send_digests(self) -> None:
        for peer, resp in self.digests.ready():
            self._reply(peer, resp)

    # ---- sending -----------------------------------------------------------------------------

    def _reply(self, peer: bytes, resp: pb.Response) -> None:
        self.node.serving.reply_or_refuse(peer, resp)

    def _send(self, peer: bytes, frame: bytes) -> None:
        self.node.serving.send(peer, frame)
