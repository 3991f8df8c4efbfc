"""WalSync: the records a follower lacks, from this node's WAL (docs/protocol.md).

Catch-up after a gap or a restart, and a relay's own followers' repairs, all come here: at
least one record, at most what the request and the peer's budget of unread replies allow,
none past what this node has made visible, and none the follower holds already (``to_lsn``).
A follower that asked for zstd gets the records back to back in one frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kevo_repl.core.errors import TooOldError
from kevo_repl.core.record import peek_lsns
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError
from kevo_repl.wire.compression import codec_for, deflate

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["MAX_SYNC_BYTES", "MIN_SYNC_BYTES", "serve_wal_sync"]

MIN_SYNC_BYTES = 64 * 1024
MAX_SYNC_BYTES = 16 * 1024 * 1024


def serve_wal_sync(node: Node, peer: bytes, rid: int, req: pb.WalSyncRequest, now: int) -> None:
    """Raw stored records from the one holding ``from_lsn``: bounded by bytes and by the
    peer's unread budget, up to ``to_lsn`` (what the follower lacks), compressed if asked.
    A bad request raises ``WireError`` (answered by the caller)."""
    wal = node.wal
    visible = node.visible_lsn  # records still syncing are not served yet
    if req.from_lsn < 1 or req.from_lsn > visible + 1:
        raise WireError(f"wal_sync: from_lsn {req.from_lsn} outside 1..{visible + 1}")
    room = node.serving.budget.room(peer)
    if room < MIN_SYNC_BYTES:
        msg = f"{node.serving.budget.unread_bytes(peer)} bytes of earlier replies are unread"
        raise WireError(msg, pb.ERROR_UNREAD_REPLIES)
    max_bytes = max(MIN_SYNC_BYTES, min(req.max_bytes or MAX_SYNC_BYTES, MAX_SYNC_BYTES, room))
    records: list[bytes] = []
    try:
        for record in wal.read_from(req.from_lsn, max_bytes):
            first, last = peek_lsns(record)
            if last > visible or (records and req.to_lsn and first > req.to_lsn):
                break  # not yet served, or held by the follower already
            records.append(record)
    except TooOldError:
        node.log.info("wal_sync_too_old", from_lsn=req.from_lsn)
        msg = f"LSN {req.from_lsn} was retained away; WAL starts at {wal.retained_from_lsn}"
        node.serving.send_error(
            peer, rid, pb.ERROR_TOO_OLD, msg, retained_from_lsn=wal.retained_from_lsn
        )
        return
    if node.followers.get(peer) is not None:  # a replica, not a tail or a tool
        node.followers.note_catchup(peer, now)
        node.counters.catchups_served += 1
    resp = pb.WalSyncResponse(
        primary_lsn=visible,
        retained_from_lsn=wal.retained_from_lsn,
        history_id=node.state.chain.current,
    )
    if codec_for(req.compression) == pb.CODEC_ZSTD:
        raw = b"".join(records)
        resp.compressed = deflate(raw)
        node.counters.compressed(len(raw), len(resp.compressed))
    else:
        resp.records.extend(records)
    node.serving.reply_or_refuse(peer, pb.Response(request_id=rid, wal_sync=resp))
