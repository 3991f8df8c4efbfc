"""What a replica answers on its own ROUTER: reads, status and digest; writes are redirected.

A write sent to a replica is refused with ``ERROR_NOT_PRIMARY`` naming the primary, so a
client can retry there (``kevo_repl.Client`` does this by itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.core.errors import StorageError
from kevo_repl.node.digests import DigestQueue
from kevo_repl.node.parked_reads import ParkedReads
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError
from kevo_repl.wire.envelope import decode_request, error_response

if TYPE_CHECKING:
    from kevo_repl.node.replica_node import ReplicaNode

__all__ = ["ReplicaRequests"]

_WRITES = frozenset({"put", "delete", "batch"})
_REPLICATION = frozenset({"register", "heartbeat", "ack", "wal_sync", "bootstrap"})


class ReplicaRequests:
    def __init__(self, node: ReplicaNode) -> None:
        self.node = node
        serving = node.serving
        self.reads = ParkedReads(
            lambda: node.store,
            serving.reply_or_refuse,
            serving.send,
            node.config.limits.max_key_bytes,
        )
        self.digests = DigestQueue(lambda: node.store)

    def handle(self, peer: bytes, frame: bytes, user: str = "") -> None:
        node = self.node
        try:
            req = decode_request(frame, node.config.limits)
        except WireError as exc:
            self._send(peer, error_response(0, exc.code, str(exc)))
            return
        if req.read_token:
            node.serving.confirm(peer, req.read_token)
        kind = req.WhichOneof("body")
        rid = req.request_id
        if kind is None or not node.serving.allowed(user, kind):
            msg = f"this key may not send {kind} requests"
            self._send(peer, error_response(rid, pb.ERROR_UNAUTHORIZED, msg))
            return
        try:
            if kind == "get":
                self.reads.get(peer, rid, req.get, monotonic_ms())
            elif kind == "status":
                self._reply(peer, pb.Response(request_id=rid, status=self._status()))
            elif kind == "digest":
                self.digests.submit(peer, rid)
            elif kind in _WRITES:
                msg = f"this node is a replica; send writes to the primary at {node.config.primary}"
                frame = error_response(rid, pb.ERROR_NOT_PRIMARY, msg, primary=node.config.primary)
                self._send(peer, frame)
            elif kind in _REPLICATION:
                msg = "this node is a replica and does not serve replication (no cascading yet)"
                self._send(peer, error_response(rid, pb.ERROR_BAD_REQUEST, msg))
        except WireError as exc:
            self._send(peer, error_response(rid, exc.code, str(exc)))
        except StorageError as exc:
            self._send(peer, error_response(rid, pb.ERROR_UNAVAILABLE, str(exc)))

    def _status(self) -> pb.StatusResponse:
        node = self.node
        f = node.follower
        return pb.StatusResponse(
            role=pb.ROLE_REPLICA,
            history_id=f.history_id,
            lsn=f.applied_lsn,
            durable_lsn=f.durable_lsn,
            status=f.status.value,  # type: ignore[arg-type]
            primary=node.config.primary,
            node_id=node.config.replica_id,
            bootstrap_progress=f.bootstrap_progress,
            error_message=f.error_message,
        )

    def send_digests(self) -> None:
        for peer, resp in self.digests.ready():
            self._reply(peer, resp)

    def _reply(self, peer: bytes, resp: pb.Response) -> None:
        self.node.serving.reply_or_refuse(peer, resp)

    def _send(self, peer: bytes, frame: bytes) -> None:
        self.node.serving.send(peer, frame)
