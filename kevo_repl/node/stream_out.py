"""What a node puts on its stream: each record once durable here, with its zstd frame
while a follower asks for one, and beacons; and the counters Status and metrics read.

Shared by both record sources (client writes, an upstream), so a primary and a relay publish
alike. A record over the stream's frame limit goes by WalSync only: a beacon announces it at
once. The zstd frame is made once per record for every follower that asked, or passed on
as received by a relay (docs/protocol.md, "Compression").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from kevo_repl.adapters.clock import wall_us
from kevo_repl.wire.compression import deflate
from kevo_repl.wire.envelope import encode_beacon

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["Counters", "StreamOut"]


@dataclass(slots=True)
class Counters:
    batches_published: int = 0
    entries_published: int = 0
    bytes_published: int = 0
    catchups_served: int = 0
    bootstraps_served: int = 0
    records_by_walsync_only: int = 0  # over the stream's frame limit: not published
    compressed_raw_bytes: int = 0  # compressed for followers (stream, WalSync, bootstrap)
    compressed_wire_bytes: int = 0  # what that became

    def compressed(self, raw: int, wire: int) -> None:
        self.compressed_raw_bytes += raw
        self.compressed_wire_bytes += wire


class StreamOut:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.last_publish_ms = 0  # a record or a beacon: the stream's last word

    def publish(
        self,
        records: list[tuple[int, int, bytes]],
        now: int,
        compressed: dict[int, bytes] | None = None,
    ) -> None:
        """Records ``(first, last, bytes)`` just made durable here: on the stream (a record
        over the frame limit is announced by a beacon, followers fetch it by WalSync), to
        the followers' registry, and to waiting reads.

        While a follower wants a compressed stream, each record also goes out compressed on
        topic Z, compressed once for all of them; a relay passes on the frames it received
        (``compressed``, by first LSN) instead of compressing them again."""
        if not records:
            return
        node = self.node
        c = node.counters
        unpublished = 0
        nbytes = 0
        zstd = node.followers.wants_compression
        for first, last, record in records:
            nbytes += len(record)
            frame = None
            if zstd and len(record) <= node.serving.max_stream_record_bytes:
                frame = compressed.get(first) if compressed else None
                if frame is None:
                    frame = deflate(record)
                c.compressed(len(record), len(frame) + 1)
            if node.serving.publish_record(record, frame):
                c.batches_published += 1
                c.entries_published += last - first + 1
                c.bytes_published += len(record) + 1
            else:
                unpublished += 1
        node.followers.note_commit(records[-1][1], now, nbytes)
        node.stats.published.note(now, c.entries_published, c.bytes_published)
        if unpublished:
            c.records_by_walsync_only += unpublished
            self.beacon(now)
        else:
            self.last_publish_ms = now
        node.requests.reads.release(now)

    def beacon(self, now: int) -> None:
        """Where the stream stands: sent when it was idle, and at once on news (a record
        only WalSync carries, a new history, writes starting or ceasing to wait)."""
        node = self.node
        self.last_publish_ms = now
        frame = encode_beacon(
            node.state.chain.current,
            node.visible_lsn,
            wall_us(),
            node.wal.retained_from_lsn,
            node.source.writes_waiting,
        )
        node.serving.pub.send(frame, zmq.DONTWAIT)
