"""A replica's connection to its upstream: SUB for the stream, DEALER for requests.

Everything that arrives is decoded here and every record's crc verified, so the follower
only ever sees whole, checked records; every request the follower asks for is encoded and
sent here, with the ``read_token`` of the last large reply read. The sockets are replaced
on ``reconnect`` (whatever the old DEALER had in flight is dropped with it).

Compression is this layer's alone: a follower that wants zstd asks on Register, subscribes
to topic Z instead of W once the upstream agrees, and asks for compressed WalSync replies
and bootstrap chunks; everything is inflated here within the reply and record limits
(``wire/compression.py``), so the follower never sees a compressed byte. Bytes received and
what they inflated to are counted for Status.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import zmq

from kevo_repl.adapters.connect_watch import ConnectWatch
from kevo_repl.adapters.security import ClientCurve
from kevo_repl.adapters.zmq_io import (
    SocketOptions,
    connect_socket,
    endpoint,
    recv_frames_nowait,
    send_nowait,
)
from kevo_repl.client import parse_node
from kevo_repl.core.errors import ProtocolError
from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import (
    Action,
    SendAck,
    SendBootstrap,
    SendHeartbeat,
    SendRegister,
    SendRewind,
    SendWalSync,
)
from kevo_repl.core.record import record_extent, verify_wire_record
from kevo_repl.wire import pb
from kevo_repl.wire.batch import BytesLike, WireLimits, decode_batch
from kevo_repl.wire.compression import inflate, parse_codec
from kevo_repl.wire.envelope import (
    TOPIC_BEACON,
    TOPIC_WAL,
    TOPIC_ZSTD,
    decode_beacon,
    decode_response,
    split_stream_frame,
)
from kevo_repl.wire.history import chain_from_wire, chain_to_wire

__all__ = ["DEALER_RCVHWM", "SUB_RCVHWM", "Decoded", "UpstreamLink"]

SUB_RCVHWM = 1024  # stream frames buffered from the upstream (256 MiB at most)
DEALER_RCVHWM = 16  # replies buffered from the upstream (it sends few at a time)

Decoded = tuple[int, int, pb.WalBatch, bytes]  # first LSN, last LSN, batch, record bytes


class UpstreamLink:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        upstream: str,
        limits: WireLimits,
        curve: ClientCurve | None,
        replica_id: str,
        address: str,
        log: Any,
        compression: str = "none",
    ) -> None:
        self.upstream = upstream
        self._log = log
        self._host, self._port = parse_node(upstream)
        self._ctx = ctx
        self._curve = curve
        self._replica_id = replica_id
        self._address = address
        self._sub_opts = SocketOptions(
            rcvhwm=SUB_RCVHWM, max_msg_bytes=limits.max_stream_frame_bytes
        )
        self._opts = SocketOptions(rcvhwm=DEALER_RCVHWM, max_msg_bytes=limits.max_reply_bytes)
        self._limits = limits
        # What we ask for on Register (--compression, auto decided by the upstream's host),
        # and what the upstream agreed to send (its Register answer).
        self.wanted = self.codec = parse_codec(compression, self._host)
        self.compressed: dict[int, bytes] = {}  # zstd frames of decoded records, to pass on
        self.wire_bytes = 0  # received from the upstream: stream frames and replies
        self.raw_bytes = 0  # the same, inflated (``_inflate`` adds what inflating added)
        self._ids = itertools.count(1)
        self.received_lsn: Callable[[], int] = lambda: 0  # written to the WAL (for write_lag)
        self.heard = pb.HeartbeatResponse()  # the upstream's last word on this follower
        # The upstream's last beacon said writes wait for acks (until one says: eager).
        self.writes_waiting = True
        self._pending_id = 0  # request id of the follower's one pending request
        self._read_token = 0  # of the upstream's last large reply: echoed as proof we read it
        self.decoded: dict[int, Decoded] = {}  # records offered to the follower, by first LSN
        self.upstream_info = pb.RegisterResponse()  # the upstream's last Register answer
        self.peers: list[str] = []  # the upstream's other followers, as it last said
        prepare = curve.apply if curve else None
        self.sub = connect_socket(ctx, zmq.SUB, self._host, self._port, self._sub_opts, prepare)
        self.sub.setsockopt(zmq.SUBSCRIBE, self._record_topic(self.codec))
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_BEACON)
        self._watch: ConnectWatch
        self.dealer = self._new_dealer()

    def _new_dealer(self) -> zmq.Socket[bytes]:
        where = endpoint(self._host, self._port + 1)

        def prepare(sock: zmq.Socket[bytes]) -> None:  # watched from before the connect
            if self._curve:
                self._curve.apply(sock)
            self._watch = ConnectWatch(sock, where, self._curve is not None)

        return connect_socket(
            self._ctx, zmq.DEALER, self._host, self._port + 1, self._opts, prepare
        )

    @staticmethod
    def _record_topic(codec: int) -> bytes:
        return TOPIC_ZSTD if codec == pb.CODEC_ZSTD else TOPIC_WAL

    def _use_codec(self, codec: pb.Codec.ValueType) -> None:
        """Follow the records on the topic of what the upstream agreed to send; what the
        switch drops or doubles is a gap or a duplicate the follower already handles."""
        if codec != self.codec:
            self.sub.setsockopt(zmq.SUBSCRIBE, self._record_topic(codec))
            self.sub.setsockopt(zmq.UNSUBSCRIBE, self._record_topic(self.codec))
            self.codec = codec

    def diagnose(self, waited_ms: int) -> tuple[str, str]:
        """Why the upstream did not answer: ``(cause, sentence)`` (``adapters/connect_watch``)."""
        return self._watch.diagnose(self.upstream, waited_ms)

    def reconnect(self) -> None:
        """A fresh DEALER: whatever the old one had in flight is dropped with it."""
        self._close_dealer()
        self.dealer = self._new_dealer()
        self._read_token = 0  # a new connection owes nothing

    def _close_dealer(self) -> None:
        self._watch.close()
        self.dealer.close(0)

    def close(self) -> None:
        self.sub.close(0)
        self._close_dealer()

    # ---- inbound -----------------------------------------------------------------------------

    def drain(
        self,
        sock: zmq.Socket[bytes],
        follower: Follower,
        run: Callable[[list[Action]], None],
        bad: Callable[[str, ProtocolError], None],
        limit: int,
    ) -> None:
        """Hand up to ``limit`` messages of ``sock`` to the follower, actions to ``run``."""
        for _ in range(limit):
            if sock is not self.sub and sock is not self.dealer:
                return  # replaced by a reconnect the last message caused
            frames = recv_frames_nowait(sock, 1)
            if frames is None:
                return
            if len(frames) != 1:
                continue
            self.wire_bytes += len(frames[0])
            self.raw_bytes += len(frames[0])
            try:
                if sock is self.sub:
                    run(self._on_stream_frame(frames[0], follower))
                else:
                    run(self._on_reply(frames[0], follower))
            except ProtocolError as exc:
                bad("bad_stream_frame" if sock is self.sub else "bad_reply", exc)

    def _on_stream_frame(self, frame: bytes, follower: Follower) -> list[Action]:
        topic, rest = split_stream_frame(frame)
        if topic == TOPIC_WAL:
            first, last, history, record = self._decode_record(bytes(rest))
            return follower.on_record(first, last, history, record)
        if topic == TOPIC_ZSTD:
            raw = self._inflate(rest, self._limits.max_stream_record_bytes, "stream record")
            first, last, history, record = self._decode_record(raw)
            self.compressed[first] = bytes(rest)
            return follower.on_record(first, last, history, record)
        beacon = decode_beacon(rest)
        self.writes_waiting = beacon.writes_waiting
        return follower.on_beacon(beacon.history_id, beacon.last_lsn)

    def _on_reply(self, frame: bytes, follower: Follower) -> list[Action]:
        resp = decode_response(frame)
        if resp.read_token:
            self._read_token = resp.read_token
        kind = resp.WhichOneof("body")
        mine = resp.request_id == self._pending_id
        if kind == "heartbeat":
            self.peers = list(resp.heartbeat.peers)
            self.heard = resp.heartbeat
            return follower.on_heartbeat_reply(resp.heartbeat.primary_lsn)
        if kind == "register" and mine:
            r = resp.register
            self.upstream_info = r
            self._use_codec(r.compression if self.wanted else pb.CODEC_NONE)
            return follower.on_register_reply(
                r.primary_lsn,
                r.retained_from_lsn,
                chain_from_wire(r.history, r.history_id),
                r.bootstrap_required,
                upstream_is_primary=r.role in (pb.ROLE_PRIMARY, pb.ROLE_UNSPECIFIED),
            )
        if kind == "wal_sync" and mine:
            try:
                raw = self._wal_sync_records(resp.wal_sync)
                records = [self._decode_record(rec) for rec in raw]
            except ProtocolError as exc:
                return follower.on_request_refused("BAD_RECORD", str(exc))
            return follower.on_wal_sync_reply(records, resp.wal_sync.primary_lsn)
        if kind == "bootstrap" and mine:
            c = resp.bootstrap
            try:
                keys, values = self._chunk_data(c)
            except ProtocolError as exc:
                return follower.on_request_refused("BAD_CHUNK", str(exc))
            return follower.on_bootstrap_chunk(
                c.session_id,
                c.seq,
                keys,
                values,
                c.progress,
                c.is_last,
                c.snapshot_lsn,
                c.history_id,
            )
        if kind == "rewind" and mine:
            rw = resp.rewind
            return follower.on_rewind_reply(
                rw.snapshot_lsn, list(rw.keys), list(rw.values), list(rw.found)
            )
        if kind == "error":
            return self._on_error(resp.error, mine, follower)
        return []

    def _on_error(self, err: pb.Error, mine: bool, follower: Follower) -> list[Action]:
        name = pb.ErrorCode.Name(err.code) if err.code in pb.ErrorCode.values() else str(err.code)
        if err.code == pb.ERROR_NOT_REGISTERED:
            return follower.on_not_registered()
        if err.code == pb.ERROR_TOO_OLD and mine:
            return follower.on_too_old(err.retained_from_lsn)
        if mine:
            return follower.on_request_refused(name, err.message)
        if err.code != pb.ERROR_CREDIT:  # a grant that crossed the last chunk is harmless
            self._log.warning("primary_error", code=name, message=err.message)
        return []

    def _inflate(self, frame: BytesLike, limit: int, what: str) -> bytes:
        raw = inflate(frame, limit, what)
        self.raw_bytes += len(raw) - len(frame)
        return raw

    def _wal_sync_records(self, reply: pb.WalSyncResponse) -> list[bytes]:
        """The records of a WalSync reply, inflated and cut apart if it came compressed."""
        if not reply.compressed:
            return list(reply.records)
        raw = self._inflate(reply.compressed, self._limits.max_reply_bytes, "WalSync reply")
        records: list[bytes] = []
        offset = 0
        while offset < len(raw):
            end = record_extent(raw, offset)
            if end is None or end > len(raw):
                raise ProtocolError(f"WalSync reply: no whole record at byte {offset}")
            records.append(raw[offset:end])
            offset = end
        return records

    def _chunk_data(self, chunk: pb.BootstrapChunk) -> tuple[list[bytes], list[bytes]]:
        """A bootstrap chunk's keys and values, inflated if it came compressed."""
        if not chunk.compressed:
            return list(chunk.keys), list(chunk.values)
        raw = self._inflate(chunk.compressed, self._limits.max_reply_bytes, "bootstrap chunk")
        try:
            inner = pb.BootstrapChunk.FromString(raw)
        except Exception as exc:  # DecodeError: garbage that inflated
            raise ProtocolError(f"bootstrap chunk: compressed data is no chunk ({exc})") from exc
        if len(inner.keys) != len(inner.values):
            raise ProtocolError(
                f"bootstrap chunk: {len(inner.keys)} keys but {len(inner.values)} values"
            )
        return list(inner.keys), list(inner.values)

    def decoded_of(self, first_lsn: int, record: bytes) -> Decoded:
        """A record offered earlier, decoded: from this turn's, or decoded again (one the
        follower held past a gap while a WalSync filled it)."""
        decoded = self.decoded.pop(first_lsn, None)
        if decoded is None:
            self._decode_record(record)
            decoded = self.decoded.pop(first_lsn)
        return decoded

    def _decode_record(self, record: bytes) -> tuple[int, int, bytes, bytes]:
        decoded = verify_wire_record(record)
        batch = decode_batch(decoded.payload)
        if len(batch.keys) != decoded.last_lsn - decoded.first_lsn + 1:
            raise ProtocolError(
                f"record {decoded.first_lsn}..{decoded.last_lsn} holds {len(batch.keys)} entries"
            )
        self.decoded[decoded.first_lsn] = (decoded.first_lsn, decoded.last_lsn, batch, record)
        return decoded.first_lsn, decoded.last_lsn, batch.history_id, record

    # ---- outbound ----------------------------------------------------------------------------

    def send(self, action: Action) -> None:
        """Encode and send one of the follower's requests."""
        req = pb.Request()
        pending = False
        if isinstance(action, SendAck):
            req.ack.CopyFrom(
                pb.AckRequest(
                    replica_id=self._replica_id,
                    applied_lsn=action.applied_lsn,
                    durable_lsn=action.durable_lsn,
                    received_lsn=self.received_lsn(),
                )
            )
        elif isinstance(action, SendHeartbeat):
            req.heartbeat.CopyFrom(
                pb.HeartbeatRequest(
                    replica_id=self._replica_id,
                    status=action.status.value,  # type: ignore[arg-type]
                    applied_lsn=action.applied_lsn,
                    durable_lsn=action.durable_lsn,
                    error_message=action.error_message,
                    bootstrap_progress=action.bootstrap_progress,
                    received_lsn=self.received_lsn(),
                )
            )
        elif isinstance(action, SendRegister):
            req.register.CopyFrom(
                pb.RegisterRequest(
                    replica_id=self._replica_id,
                    address=self._address,
                    role=pb.ROLE_REPLICA,
                    history_id=action.history_id,
                    applied_lsn=action.applied_lsn,
                    history=chain_to_wire(action.chain),
                    primary=self.upstream_info.primary,
                    compression=self.wanted,
                )
            )
            pending = True
        elif isinstance(action, SendWalSync):
            req.wal_sync.CopyFrom(
                pb.WalSyncRequest(
                    from_lsn=action.from_lsn,
                    max_bytes=action.max_bytes,
                    to_lsn=action.to_lsn,
                    compression=self.codec,
                )
            )
            pending = True
        elif isinstance(action, SendBootstrap):
            req.bootstrap.CopyFrom(
                pb.BootstrapRequest(
                    session_id=action.session_id,
                    credit=action.credit,
                    chunk_bytes=action.chunk_bytes,
                    compression=self.codec,
                )
            )
            pending = action.session_id == 0
        elif isinstance(action, SendRewind):
            req.rewind.CopyFrom(pb.RewindRequest(keys=action.keys))
            pending = True
        else:
            raise TypeError(f"not a request: {action!r}")
        req.request_id = next(self._ids)
        req.read_token = self._read_token
        if pending:
            self._pending_id = req.request_id
        send_nowait(self.dealer, [req.SerializeToString()])
