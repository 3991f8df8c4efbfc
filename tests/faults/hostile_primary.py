"""A fake primary for attacking a real replica process: honest by default, hostile on demand.

It binds PUB on P and ROUTER on P+1 on loopback like a primary and serves a small honest
history (records 1..N of history H, plus a snapshot for bootstrap), so a replica can join
and reach a known digest. Then a test switches on hostility: ``publish()`` pushes any frames
onto the stream, ``send_to_replica()`` pushes unsolicited frames at the replica's DEALER, and
``responder`` may replace the honest answer to each request (garbage, mutated, forged).

One thread owns both sockets (ZeroMQ sockets are not thread-safe); the test talks to it
through a queue. ``expected_digest`` comes from a real ``StateStore`` fed the same records,
so "nothing forged was applied" is checked against the store's own digest code. It speaks
compression as a real primary does: what a follower asks for on Register, WalSync and
Bootstrap it gets (compressed stream frames are the test's to publish).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.client import Digest
from kevo_repl.core.ops import OP_PUT
from kevo_repl.core.record import encode_record
from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb
from kevo_repl.wire.batch import encode_client_batch, seal_batch
from kevo_repl.wire.compression import codec_for, deflate, deflate_checked
from kevo_repl.wire.envelope import encode_beacon

__all__ = ["HostilePrimary", "Responder", "make_record"]

# (request, honest reply frames) -> the frames actually sent back
Responder = Callable[[pb.Request, list[bytes]], list[bytes]]


def make_record(
    first_lsn: int, keys: list[bytes], values: list[bytes], history: bytes, *, count: int = 0
) -> bytes:
    """A crc-valid WAL record; ``count`` (if given) forges the LSN range length."""
    payload = seal_batch(
        [encode_client_batch([OP_PUT] * len(keys), keys, values)], history, 1_700_000_000
    )
    last = first_lsn + (count or len(keys)) - 1
    return encode_record(first_lsn, last, payload)


@dataclass
class HostilePrimary:
    root: Path
    records: int = 5
    per_record: int = 10
    history: bytes = field(default_factory=lambda: os.urandom(16))
    bootstrap_required: bool = False
    responder: Responder | None = None
    beacons: bool = True
    port: int = 0
    requests_seen: dict[str, int] = field(default_factory=dict)
    last_request: dict[str, pb.Request] = field(default_factory=dict)  # by kind
    last_peer: bytes = b""
    wal: list[bytes] = field(default_factory=list)
    data: dict[bytes, bytes] = field(default_factory=dict)
    expected_digest: Digest | None = None
    _out: queue.Queue[tuple[str, list[bytes], threading.Event]] = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def last_lsn(self) -> int:
        return self.records * self.per_record

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HostilePrimary:
        self._build_history()
        self.port = self.port or free_port_pair()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"hostile primary did not start: {self.errors}")
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> HostilePrimary:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what tests call ---------------------------------------------------------------------

    def publish(self, frames: list[bytes], timeout_s: float = 60.0) -> None:
        """Publish ``frames`` on the stream, in order; returns once all were handed to zmq."""
        self._submit("pub", frames, timeout_s)

    def send_to_replica(self, frames: list[bytes], timeout_s: float = 60.0) -> None:
        """Send each frame, unsolicited, to the replica's current DEALER."""
        self._submit("dealer", frames, timeout_s)

    def honest_reply(self, req: pb.Request) -> list[bytes]:
        """What a correct primary holding ``wal``/``data`` would answer."""
        kind = req.WhichOneof("body")
        rid = req.request_id
        if kind == "register":
            body = pb.RegisterResponse(
                primary_lsn=self.last_lsn,
                retained_from_lsn=1,
                history_id=self.history,
                bootstrap_required=self.bootstrap_required,
                compression=codec_for(req.register.compression),
            )
            return [pb.Response(request_id=rid, register=body).SerializeToString()]
        if kind == "heartbeat":
            hb = pb.HeartbeatResponse(primary_lsn=self.last_lsn)
            return [pb.Response(request_id=rid, heartbeat=hb).SerializeToString()]
        if kind == "wal_sync":
            start = (req.wal_sync.from_lsn - 1) // self.per_record
            to_lsn = req.wal_sync.to_lsn  # records end on multiples of per_record
            end = max(start + 1, to_lsn // self.per_record) if to_lsn else len(self.wal)
            sync = pb.WalSyncResponse(
                primary_lsn=self.last_lsn, retained_from_lsn=1, history_id=self.history
            )
            if req.wal_sync.compression == pb.CODEC_ZSTD:
                sync.compressed = deflate(b"".join(self.wal[start:end]))
            else:
                sync.records.extend(self.wal[start:end])
            return [pb.Response(request_id=rid, wal_sync=sync).SerializeToString()]
        if kind == "bootstrap" and req.bootstrap.session_id == 0:
            return self.bootstrap_chunks(rid, compressed=req.bootstrap.compression == pb.CODEC_ZSTD)
        return []

    def append_record(self) -> bytes:
        """One more honest record (``per_record`` new keys), added to the WAL this primary
        serves and to ``expected_digest``; returns it for the test to publish (or not)."""
        first = self.last_lsn + 1
        self.records += 1
        record = self._add_record(first)
        store = StateStore.open(self.root / "reference.mdb")
        try:
            keys, values = self.data_of(first)
            store.apply(first, self.last_lsn, self.history, [OP_PUT] * len(keys), keys, values)
            d = store.digest()
            self.expected_digest = Digest(d.lsn, d.keys, d.sha256)
        finally:
            store.close()
        return record

    def bootstrap_chunks(
        self, rid: int, session_id: int = 7, per_chunk: int = 17, *, compressed: bool = False
    ) -> list[bytes]:
        """The whole snapshot (at ``last_lsn``) as in-order chunks of one session."""
        items = sorted(self.data.items())
        parts = [items[i : i + per_chunk] for i in range(0, len(items), per_chunk)]
        out = []
        for seq, part in enumerate(parts):
            chunk = pb.BootstrapChunk(
                session_id=session_id,
                seq=seq,
                keys=[k for k, _ in part],
                values=[v for _, v in part],
                progress=(seq + 1) / len(parts),
                is_last=seq == len(parts) - 1,
                snapshot_lsn=self.last_lsn,
                history_id=self.history,
                total_keys=len(items),
            )
            if compressed:
                inner = pb.BootstrapChunk(keys=chunk.keys, values=chunk.values)
                chunk.compressed = deflate_checked(inner.SerializeToString())
                del chunk.keys[:], chunk.values[:]
            out.append(pb.Response(request_id=rid, bootstrap=chunk).SerializeToString())
        return out

    # ---- internals ---------------------------------------------------------------------------

    def _submit(self, where: str, frames: list[bytes], timeout_s: float) -> None:
        done = threading.Event()
        self._out.put((where, frames, done))
        if not done.wait(timeout_s):
            raise AssertionError(f"hostile primary did not send {len(frames)} frames in time")

    def _build_history(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        store = StateStore.open(self.root / "reference.mdb")
        try:
            for r in range(self.records):
                first = r * self.per_record + 1
                self._add_record(first)
                keys, values = self.data_of(first)
                last = first + len(keys) - 1
                store.apply(first, last, self.history, [OP_PUT] * len(keys), keys, values)
            d = store.digest()
            self.expected_digest = Digest(d.lsn, d.keys, d.sha256)
        finally:
            store.close()

    def _add_record(self, first: int) -> bytes:
        keys = [b"key-%04d" % (first + i) for i in range(self.per_record)]
        values = [b"v%d-%s" % (first + i, os.urandom(8).hex().encode()) for i in range(len(keys))]
        record = make_record(first, keys, values, self.history)
        self.wal.append(record)
        self.data.update(zip(keys, values, strict=True))
        return record

    def data_of(self, first: int) -> tuple[list[bytes], list[bytes]]:
        keys = [b"key-%04d" % (first + i) for i in range(self.per_record)]
        return keys, [self.data[k] for k in keys]

    def _run(self, ready: threading.Event) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        router = ctx.socket(zmq.ROUTER)
        try:
            for s in (pub, router):
                s.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, 0)  # never drop: the replica must see every frame
            router.setsockopt(zmq.SNDHWM, 0)
            pub.bind(f"tcp://127.0.0.1:{self.port}")
            router.bind(f"tcp://127.0.0.1:{self.port + 1}")
            ready.set()
            last_beacon = 0.0
            while not self._stop.is_set():
                if router.poll(5, zmq.POLLIN):
                    self._drain(router)
                self._flush_out(pub, router)
                now = time.monotonic()
                if self.beacons and now - last_beacon > 0.2:
                    last_beacon = now
                    pub.send(encode_beacon(self.history, self.last_lsn, int(now * 1e6), 1))
        except BaseException as exc:
            self.errors.append(exc)
            ready.set()
        finally:
            pub.close(0)
            router.close(0)
            ctx.term()

    def _drain(self, router: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            peer, raw = frames
            req = pb.Request()
            req.ParseFromString(raw)
            kind = req.WhichOneof("body") or "?"
            self.requests_seen[kind] = self.requests_seen.get(kind, 0) + 1
            self.last_request[kind] = req
            self.last_peer = peer
            reply = self.honest_reply(req)
            if self.responder is not None:
                reply = self.responder(req, reply)
            for frame in reply:
                router.send_multipart([peer, frame])

    def _flush_out(self, pub: zmq.Socket[bytes], router: zmq.Socket[bytes]) -> None:
        while True:
            try:
                where, frames, done = self._out.get_nowait()
            except queue.Empty:
                return
            for frame in frames:
                if where == "pub":
                    pub.send(frame)
                elif self.last_peer:
                    # the replica's DEALER may be gone (it reconnected): fine
                    with contextlib.suppress(zmq.ZMQError):
                        router.send_multipart([self.last_peer, frame], zmq.DONTWAIT)
                if router.poll(0, zmq.POLLIN):
                    self._drain(router)  # keep answering while a long burst goes out
            done.set()
