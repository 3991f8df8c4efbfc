"""What every node answers on its ROUTER: replication requests, reads, status, digest.

The same on a primary and on a replica, so any node can be followed: Register (the
follower's chain against ours), Heartbeat/Ack (positions checked, never believed), WalSync
and LsnAtTime from our own WAL up to what is durable here, Bootstrap from our store, Status,
Digest and Get. Writes go to the node's source: a primary queues them, a replica redirects
them. Every request is validated before it touches anything; a bad one gets an ``Error`` and
changes nothing, and an unexpected failure is logged and answered ``ERROR_INTERNAL``, so no
peer can stop the node. Large replies go through the per-peer budget of unread bytes.
Each request is counted by kind and each error answer by code (``NodeStats``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.core.errors import StorageError
from kevo_repl.core.follower_types import Status
from kevo_repl.core.registry import (
    DuplicateReplicaError,
    ImpossiblePositionError,
    Registry,
    RegistryFullError,
    ReplicaState,
)
from kevo_repl.node.digests import DigestQueue
from kevo_repl.node.parked_reads import ParkedReads
from kevo_repl.node.refusals import RefusalLog
from kevo_repl.node.roles import fence, handover, promote, repoint
from kevo_repl.node.serving_snapshots import SnapshotRequests
from kevo_repl.node.serving_walsync import serve_wal_sync
from kevo_repl.node.stats import INVALID_KIND
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError, decode_batch
from kevo_repl.wire.compression import codec_for, codec_name
from kevo_repl.wire.envelope import decode_request
from kevo_repl.wire.history import chain_from_wire, chain_to_wire

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["ServingRequests", "replica_info"]

REWIND_MAX_KEYS = 1024
REWIND_MAX_BYTES = 8 * 1024 * 1024


def replica_info(r: ReplicaState, registry: Registry, now_ms: int) -> pb.ReplicaInfo:
    """A registry entry as the wire's ``ReplicaInfo`` (Status)."""
    write, flush, replay = registry.lags_s(r, now_ms)
    entries, nbytes = registry.rates(r, now_ms)
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
        received_lsn=r.received_lsn,
        write_lag_s=write,
        flush_lag_s=flush,
        replay_lag_s=replay,
        entries_per_s=entries,
        bytes_per_s=nbytes,
        compression=r.compression,  # type: ignore[arg-type]
    )


class ServingRequests:
    def __init__(self, node: Node) -> None:
        self.node = node
        serving = node.serving
        self.reads = ParkedReads(
            lambda: node.store,
            serving.reply_or_refuse,
            serving.send_error,
            node.config.limits.max_key_bytes,
        )
        self.digests = DigestQueue(lambda: node.store)
        self.refusals = RefusalLog(node.log)
        self.snapshots = SnapshotRequests(node)

    # ---- entry point -------------------------------------------------------------------------

    def handle(self, peer: bytes, frame: bytes, user: str = "") -> None:
        node = self.node
        serving = node.serving
        requests = node.stats.requests
        try:
            req = decode_request(frame, node.config.limits)
        except WireError as exc:
            requests[INVALID_KIND] += 1
            self._error(peer, 0, exc.code, str(exc))
            return
        if req.read_token:
            serving.confirm(peer, req.read_token)
        kind = req.WhichOneof("body")
        rid = req.request_id
        requests[kind or INVALID_KIND] += 1  # a oneof case: the label set is the protocol's
        if kind is None or not serving.allowed(user, kind):
            msg = f"this key may not send {kind} requests"
            self._error(peer, rid, pb.ERROR_UNAUTHORIZED, msg)
            return
        try:
            self._dispatch(peer, req, kind, monotonic_ms(), user)
        except WireError as exc:
            self._error(peer, rid, exc.code, str(exc))
        except StorageError as exc:
            node.log.error("request_failed", request=kind, error=str(exc))
            self._error(peer, rid, pb.ERROR_UNAVAILABLE, str(exc))
        except Exception as exc:  # a bug must not stop the node for everyone: log it loudly
            node.log.exception("request_crashed", request=kind, error=repr(exc))
            self._error(peer, rid, pb.ERROR_INTERNAL, f"internal error: {exc!r}")

    def _dispatch(self, peer: bytes, req: pb.Request, kind: str, now: int, user: str) -> None:
        rid = req.request_id
        node = self.node
        if kind in ("put", "delete", "batch"):
            if node.source.queue_write(peer, req, kind):
                node.source.turn(now)  # a full group: commit it now
        elif kind == "get":
            self.reads.get(peer, rid, req.get, now, node.source.read_fence(req.get.key))
        elif kind == "register":
            self._register(peer, rid, req.register, now, node.serving.key_name(user))
        elif kind == "heartbeat":
            self._heartbeat(peer, rid, req.heartbeat, now)
        elif kind == "ack":
            self._ack(peer, rid, req.ack, now)
        elif kind == "wal_sync":
            serve_wal_sync(node, peer, rid, req.wal_sync, now)
        elif kind == "lsn_at_time":
            self._reply(peer, pb.Response(request_id=rid, lsn_at_time=self._lsn_at_time(req)))
        elif kind == "bootstrap":
            self.snapshots.bootstrap(peer, rid, req.bootstrap, now)
        elif kind == "scan":
            self.snapshots.scan(peer, rid, req.scan, now)
        elif kind == "status":
            status = self.status(now)
            if not node.serving.sees_followers(user):  # tail and read-only clients
                del status.replicas[:], status.peers[:]
            self._reply(peer, pb.Response(request_id=rid, status=status))
        elif kind == "digest":
            self.digests.submit(peer, rid)
        elif kind == "rewind":
            self._rewind(peer, rid, req.rewind)
        elif kind == "promote":
            self._reply(peer, pb.Response(request_id=rid, promote=promote(node, req.promote.force)))
        elif kind == "repoint":
            resp = repoint(node, req.repoint.upstream)
            self._reply(peer, pb.Response(request_id=rid, repoint=resp))
        elif kind == "forget":
            self.snapshots.forget(peer, rid, req.forget.replica_id, now)
        elif kind == "handover":
            resp_h = handover(node, req.handover.to, req.handover.cancel)
            self._reply(peer, pb.Response(request_id=rid, handover=resp_h))

    # ---- replication -------------------------------------------------------------------------

    def _register(
        self, peer: bytes, rid: int, reg: pb.RegisterRequest, now: int, key_name: str
    ) -> None:
        node = self.node
        if not reg.replica_id or len(reg.replica_id) > 256:
            raise WireError("register: replica_id must be 1..256 characters")
        if key_name and reg.replica_id != key_name:
            msg = f"this key belongs to replica {key_name!r}, not {reg.replica_id!r}"
            self._error(peer, rid, pb.ERROR_UNAUTHORIZED, msg)
            return
        theirs = chain_from_wire(reg.history, reg.history_id)
        codec = codec_for(reg.compression)
        try:
            node.followers.register(
                reg.replica_id, peer, reg.address[:512], reg.role, reg.applied_lsn, now, codec
            )
        except DuplicateReplicaError as exc:
            self._error(peer, rid, pb.ERROR_DUPLICATE_REPLICA, str(exc))
            return
        except RegistryFullError as exc:
            self._error(peer, rid, pb.ERROR_UNAVAILABLE, str(exc))
            return
        ours = node.state.chain
        if node.role == pb.ROLE_PRIMARY and theirs.descends_from(ours):
            why = (
                f"replica {reg.replica_id} follows history {theirs.current.hex()}, forked from "
                f"ours at LSN {theirs.end_of(ours.current)}: another node was promoted"
            )
            fence(node, why, reg.primary)
        wal = node.wal
        uncovered = reg.applied_lsn + 1 < wal.retained_from_lsn
        on_our_line = not theirs or ours.shared_lsn(theirs) is not None
        node.log.info(
            "replica_registered",
            replica_id=reg.replica_id,
            address=reg.address,
            applied_lsn=reg.applied_lsn,
            history=theirs.describe(),
            bootstrap_required=uncovered and on_our_line,
            compression=codec_name(codec),
        )
        resp = pb.RegisterResponse(
            primary_lsn=node.visible_lsn,
            retained_from_lsn=wal.retained_from_lsn,
            history_id=ours.current,
            bootstrap_required=uncovered and on_our_line,
            history=chain_to_wire(ours),
            role=node.role,  # type: ignore[arg-type]
            primary=self.primary_address(),
            compression=codec,
        )
        self._reply(peer, pb.Response(request_id=rid, register=resp))

    def primary_address(self) -> str:
        """Where writes go: this node if it is the primary, else what its upstream said."""
        if self.node.role == pb.ROLE_PRIMARY:
            return self.node.address
        status = pb.StatusResponse()
        self.node.source.describe(status)
        return status.primary

    def _heartbeat(self, peer: bytes, rid: int, hb: pb.HeartbeatRequest, now: int) -> None:
        status = Status(hb.status) if hb.status in Status._value2member_map_ else Status.ERROR
        registry = self.node.followers
        try:
            r, done = registry.heartbeat(
                peer,
                status,
                hb.applied_lsn,
                hb.durable_lsn,
                hb.bootstrap_progress,
                hb.error_message[:1024],
                now,
                hb.received_lsn,
            )
        except ImpossiblePositionError as exc:
            self._impossible(peer, rid, exc, now)
            return
        if r is None:
            self._error(peer, rid, pb.ERROR_NOT_REGISTERED, "register first")
            return
        self.node.source.released(done)
        peers = [x.address for x in registry.replicas()[:64] if x is not r and x.address]
        write, flush, replay = registry.lags_s(r, now)
        resp = pb.HeartbeatResponse(
            primary_lsn=self.node.visible_lsn,
            lag_entries=registry.lag_entries(r),
            lag_ms=registry.lag_ms(r, now),
            peers=peers,
            write_lag_s=write,
            flush_lag_s=flush,
            replay_lag_s=replay,
        )
        self._reply(peer, pb.Response(request_id=rid, heartbeat=resp))

    def _ack(self, peer: bytes, rid: int, ack: pb.AckRequest, now: int) -> None:
        try:
            r, done = self.node.followers.ack(
                peer, ack.applied_lsn, ack.durable_lsn, now, ack.received_lsn
            )
        except ImpossiblePositionError as exc:
            self._impossible(peer, rid, exc, now)
            return
        if r is None:
            self._error(peer, rid, pb.ERROR_NOT_REGISTERED, "register first")
        self.node.source.released(done)

    def _impossible(self, peer: bytes, rid: int, exc: ImpossiblePositionError, now: int) -> None:
        """A forged or broken position: refused, logged (rate-limited), nothing changed."""
        r = self.node.followers.get(peer)
        who = r.replica_id if r is not None else peer.hex()
        self.refusals.refused("impossible_position", now, replica_id=who, error=str(exc))
        self._error(peer, rid, pb.ERROR_BAD_REQUEST, str(exc))

    def _lsn_at_time(self, req: pb.Request) -> pb.LsnAtTimeResponse:
        """The first LSN committed at or after a time (``tail --from-time``), from our WAL."""
        wal, visible = self.node.wal, self.node.visible_lsn
        found = wal.first_at_time(
            req.lsn_at_time.time_us, visible, lambda p: decode_batch(p).commit_time_us
        )
        resp = pb.LsnAtTimeResponse(last_lsn=visible, retained_from_lsn=wal.retained_from_lsn)
        if found is not None:
            resp.lsn, resp.commit_time_us = found
        return resp

    def _rewind(self, peer: bytes, rid: int, req: pb.RewindRequest) -> None:
        """Current values of the keys a rewinding follower's tail touched, from one read."""
        keys = list(req.keys[:REWIND_MAX_KEYS])
        limit = self.node.config.limits.max_key_bytes
        if any(not k or len(k) > limit for k in keys):
            raise WireError(f"rewind: keys must be 1..{limit} bytes", pb.ERROR_TOO_LARGE)
        values, lsn = self.node.store.read_many(keys, REWIND_MAX_BYTES)
        resp = pb.RewindResponse(
            snapshot_lsn=lsn,
            keys=keys[: len(values)],
            values=[v or b"" for v in values],
            found=[v is not None for v in values],
        )
        self._reply(peer, pb.Response(request_id=rid, rewind=resp))

    # ---- status and timers -------------------------------------------------------------------

    def status(self, now: int) -> pb.StatusResponse:
        node = self.node
        reg = node.followers
        status = pb.StatusResponse(
            role=node.role,  # type: ignore[arg-type]
            history_id=node.state.chain.current,
            history=chain_to_wire(node.state.chain),
            lsn=node.store.applied_lsn,
            durable_lsn=node.wal.durable_lsn,
            retained_from_lsn=node.wal.retained_from_lsn,
            replicas=[replica_info(r, reg, now) for r in reg.replicas()],
            node_id=node.config.node_id,
            retention_held_by=node.retention_held_by,
            wal_bytes=node.wal.size_bytes,
            coordinator=node.coordinator,
        )
        c = node.counters
        status.compressed_raw_bytes = c.compressed_raw_bytes
        status.compressed_wire_bytes = c.compressed_wire_bytes
        status.entries_per_s, status.bytes_per_s = node.stats.published.rates(
            now, c.entries_published, c.bytes_published
        )
        if node.security is not None:  # clients learn it here for their key dir
            status.server_key = node.security.keys.public.decode("ascii")
        node.source.describe(status)
        return status

    def tick(self, now: int) -> None:
        stale, expired = self.node.followers.tick(now)
        for r in stale:
            self.node.log.warning("replica_disconnected", replica_id=r.replica_id)
        self.node.source.released(expired)
        self.reads.release(now)
        refused = self.node.security.refused if self.node.security is not None else ()
        while refused:
            h = refused.popleft()
            self.refusals.refused("handshake_refused", now, peer=h.peer, key=h.key, reason=h.reason)
        self.refusals.flush(now)

    def send_digests(self) -> None:
        for peer, resp in self.digests.ready():
            self._reply(peer, resp)

    def close(self) -> None:
        self.digests.close()

    # ---- sending -----------------------------------------------------------------------------

    def _reply(self, peer: bytes, resp: pb.Response) -> None:
        self.node.serving.reply_or_refuse(peer, resp)

    def _error(
        self,
        peer: bytes,
        rid: int,
        code: pb.ErrorCode.ValueType,
        message: str,
        *,
        retained_from_lsn: int = 0,
    ) -> None:
        self.node.serving.send_error(peer, rid, code, message, retained_from_lsn=retained_from_lsn)
