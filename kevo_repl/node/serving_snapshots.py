"""The requests a node serves from its registry of followers and from store snapshots:
a follower's Bootstrap, a Backup and a Scan (each a consistent snapshot streamed against
credit, ``bootstrap_stream.py``), and Forget (a departed follower dropped from the list).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kevo_repl.node.bootstrap_stream import BootstrapSession, SessionsFullError
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError
from kevo_repl.wire.compression import codec_for

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["SnapshotRequests"]


class SnapshotRequests:
    def __init__(self, node: Node) -> None:
        self.node = node

    def bootstrap(self, peer: bytes, rid: int, req: pb.BootstrapRequest, now: int) -> None:
        """A follower's bootstrap (registered first), or a backup (``kevo-repl backup``)."""
        node = self.node
        if req.session_id:
            self._session_credit(peer, req.session_id, req.credit, req.cancel, now)
            return
        kind = "backup" if req.backup else "bootstrap"
        if kind == "bootstrap" and node.followers.get(peer) is None:
            self._error(peer, rid, pb.ERROR_NOT_REGISTERED, "register first")
            return
        session = self._start_session(
            peer, rid, req.credit, req.chunk_bytes, now, kind, compression=req.compression
        )
        if session is None:
            return
        if kind == "bootstrap":
            node.followers.note_bootstrap(peer, session.snapshot.lsn, now)
            node.counters.bootstraps_served += 1
        node.log.info(
            f"{kind}_serving",
            session=session.session_id,
            snapshot_lsn=session.snapshot.lsn,
            keys=session.snapshot.key_count,
        )

    def scan(self, peer: bytes, rid: int, req: pb.ScanRequest, now: int) -> None:
        """Keys starting with a prefix, from one snapshot, against credit (any reader)."""
        if req.session_id:
            self._session_credit(peer, req.session_id, req.credit, req.cancel, now)
            return
        self._start_session(peer, rid, req.credit, req.chunk_bytes, now, "scan", req.prefix)

    def _start_session(
        self,
        peer: bytes,
        rid: int,
        credit: int,
        chunk_bytes: int,
        now: int,
        kind: str,
        prefix: bytes = b"",
        compression: int = pb.CODEC_NONE,
    ) -> BootstrapSession | None:
        codec = codec_for(compression)
        try:
            return self.node.sessions.start(
                peer, rid, credit, chunk_bytes, now, kind, prefix, codec
            )
        except SessionsFullError as exc:
            self._error(peer, rid, pb.ERROR_UNAVAILABLE, str(exc))
            return None

    def _session_credit(
        self, peer: bytes, session_id: int, credit: int, cancel: bool, now: int
    ) -> None:
        sessions = self.node.sessions
        known = (
            sessions.cancel(peer, session_id)
            if cancel
            else sessions.grant(peer, session_id, credit, now)
        )
        if not known and not cancel:  # a cancel crossing the last chunk is harmless
            raise WireError(f"unknown snapshot session {session_id}", pb.ERROR_CREDIT)

    def forget(self, peer: bytes, rid: int, replica_id: str, now: int) -> None:
        try:
            r = self.node.followers.forget(replica_id, now)
        except (KeyError, ValueError) as exc:
            raise WireError(str(exc).strip('"')) from None
        seen = now - r.last_seen_ms
        self.node.log.warning(
            "replica_forgotten", replica_id=replica_id, applied_lsn=r.applied_lsn, seen_ms=seen
        )
        resp = pb.ForgetResponse(applied_lsn=r.applied_lsn, last_seen_ms=seen)
        self._reply(peer, pb.Response(request_id=rid, forget=resp))

    def _reply(self, peer: bytes, resp: pb.Response) -> None:
        self.node.serving.reply_or_refuse(peer, resp)

    def _error(self, peer: bytes, rid: int, code: pb.ErrorCode.ValueType, message: str) -> None:
        self.node.serving.send_error(peer, rid, code, message)
