"""Bootstrap sessions on the primary: a consistent LMDB snapshot streamed against credit.

A session holds one LMDB read transaction (the snapshot, at a known LSN) while writes go on.
Chunks leave only while the replica has granted credit, a few per loop turn, so a bootstrap
never starves the write path or other replicas; a session whose replica stops granting
credit is dropped after ``idle_timeout_ms`` and its read transaction released. Credit is a
claim, not proof: each chunk also goes through the serving side's budget of unread bytes,
so a replica that grants credit without reading holds at most that budget of chunks. A
follower that asked for zstd gets each chunk's keys and values as one checksummed zstd frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kevo_repl.adapters.state_lmdb import StateStore, StoreSnapshot
from kevo_repl.core.errors import KevoError, StorageError
from kevo_repl.wire import pb
from kevo_repl.wire.compression import deflate_checked

__all__ = ["BootstrapSession", "BootstrapSessions", "SessionsFullError"]

MAX_CREDIT = 64
MAX_SESSIONS = 16
EVICT_IDLE_MS = 1000
RELEASE_EVERY_CHUNKS = 64


class SessionsFullError(KevoError):
    """Every bootstrap slot is busy with a session that is making progress."""


MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class BootstrapSession:
    session_id: int
    peer: bytes
    request_id: int
    snapshot: StoreSnapshot
    chunks: Iterator[tuple[list[bytes], list[bytes]]]
    credit: int
    last_active_ms: int
    seq: int = 0
    keys_sent: int = 0
    unsent: pb.Response | None = None  # a chunk the peer could not take yet
    done: bool = False
    kind: str = "bootstrap"  # or "backup", "scan"
    ahead: tuple[list[bytes], list[bytes]] | None = None  # the next chunk, read already
    compression: int = pb.CODEC_NONE


@dataclass(slots=True)
class BootstrapSessions:
    store: StateStore
    idle_timeout_ms: int = 30_000
    _sessions: dict[int, BootstrapSession] = field(default_factory=dict)
    _next_id: int = 1
    _chunks_since_release: int = 0
    on_compressed: Callable[[int, int], None] = lambda raw, wire: None  # bytes, for Status

    def start(
        self,
        peer: bytes,
        request_id: int,
        credit: int,
        chunk_bytes: int,
        now_ms: int,
        kind: str = "bootstrap",
        prefix: bytes = b"",
        compression: int = pb.CODEC_NONE,
    ) -> BootstrapSession:
        """Open a snapshot for ``peer`` (dropping any older session of the same peer).

        At most ``MAX_SESSIONS`` run at once, well under the store's snapshot slots, so idle
        sessions can never starve Digest: when full, the session idle longest goes if it has
        been idle ``EVICT_IDLE_MS``, otherwise ``SessionsFullError`` (the replica retries).
        """
        for old in [s for s in self._sessions.values() if s.peer == peer]:
            self._close(old)
        if len(self._sessions) >= MAX_SESSIONS:
            idlest = min(self._sessions.values(), key=lambda s: s.last_active_ms)
            if now_ms - idlest.last_active_ms < EVICT_IDLE_MS:
                raise SessionsFullError(f"{MAX_SESSIONS} bootstraps already in progress")
            self._close(idlest)
        snapshot = self.store.snapshot()
        chunk_bytes = max(MIN_CHUNK_BYTES, min(chunk_bytes or 256 * 1024, MAX_CHUNK_BYTES))
        session = BootstrapSession(
            session_id=self._next_id,
            peer=peer,
            request_id=request_id,
            snapshot=snapshot,
            chunks=snapshot.chunks(chunk_bytes, prefix=prefix),
            credit=max(1, min(credit, MAX_CREDIT)),
            last_active_ms=now_ms,
            kind=kind,
            compression=compression,
        )
        self._next_id += 1
        self._sessions[session.session_id] = session
        return session

    def grant(self, peer: bytes, session_id: int, credit: int, now_ms: int) -> bool:
        """Add credit to a session; False for an unknown session or another peer's."""
        session = self._sessions.get(session_id)
        if session is None or session.peer != peer:
            return False
        session.credit = max(0, min(session.credit + credit, MAX_CREDIT))
        if credit > 0:  # an empty grant is not progress: it must not keep a snapshot alive
            session.last_active_ms = now_ms
        return True

    def pump(
        self, reply: Callable[[bytes, pb.Response], bool | None], budget: int, now_ms: int
    ) -> int:
        """Send up to ``budget`` chunks across sessions with credit; returns chunks sent.

        ``reply`` is the serving side's: False when the peer's queue is full, None when the
        peer has not read enough of what it was sent; the chunk then waits for a later turn.
        """
        sent = 0
        for session in list(self._sessions.values()):
            while (
                session.credit > 0
                and sent < budget
                and (session.unsent is not None or not session.done)
            ):
                try:
                    resp = (
                        session.unsent if session.unsent is not None else self._next_frame(session)
                    )
                except StorageError as exc:  # SnapshotLostError: the map grew under it
                    msg = f"bootstrap snapshot lost ({exc}); register again to restart"
                    error = pb.Error(code=pb.ERROR_UNAVAILABLE, message=msg)
                    reply(session.peer, pb.Response(request_id=session.request_id, error=error))
                    self._close(session)
                    break
                if not reply(session.peer, resp):
                    session.unsent = resp
                    break
                session.unsent = None
                session.credit -= 1
                session.seq += 1
                self._chunks_since_release += 1
                session.last_active_ms = now_ms
                sent += 1
            if session.done and session.unsent is None and session.session_id in self._sessions:
                self._close(session)
        if self._chunks_since_release >= RELEASE_EVERY_CHUNKS:
            # A snapshot scan touches every page of the store: keep them out of our RSS.
            self._chunks_since_release = 0
            self.store.release_pages()
        return sent

    def cancel(self, peer: bytes, session_id: int) -> bool:
        """End a session early (a scan that has read enough); False if not the peer's."""
        session = self._sessions.get(session_id)
        if session is None or session.peer != peer:
            return False
        self._close(session)
        return True

    def expire(self, now_ms: int) -> list[BootstrapSession]:
        stale = [
            s for s in self._sessions.values() if now_ms - s.last_active_ms > self.idle_timeout_ms
        ]
        for s in stale:
            self._close(s)
        return stale

    def active(self) -> int:
        return len(self._sessions)

    def has_credit(self) -> bool:
        """True when some session could send now (the loop then polls without waiting)."""
        return any(
            s.credit > 0 and not s.done and s.unsent is None for s in self._sessions.values()
        )

    def close_all(self) -> None:
        for s in list(self._sessions.values()):
            self._close(s)

    def _next_frame(self, session: BootstrapSession) -> pb.Response:
        snap = session.snapshot
        if session.ahead is not None:
            (keys, values), session.ahead = session.ahead, None
        else:
            keys, values = next(session.chunks, ([], []))
        session.keys_sent += len(keys)
        if session.kind == "scan":  # a prefix: only reading on says whether more follow
            session.ahead = next(session.chunks, None)
            is_last = session.ahead is None
        else:  # the snapshot's exact key count says when the last chunk leaves
            is_last = session.keys_sent >= snap.key_count or not keys
        session.done = is_last
        total = max(snap.key_count, 1)
        chunk = pb.BootstrapChunk(
            session_id=session.session_id,
            seq=session.seq,
            progress=1.0 if is_last else min(session.keys_sent / total, 0.999),
            is_last=is_last,
            snapshot_lsn=snap.lsn,
            history_id=snap.history_id or b"",
            total_keys=0 if session.kind == "scan" else snap.key_count,
        )
        if session.compression == pb.CODEC_ZSTD:
            raw = pb.BootstrapChunk(keys=keys, values=values).SerializeToString()
            chunk.compressed = deflate_checked(raw)
            self.on_compressed(len(raw), len(chunk.compressed))
        else:
            chunk.keys.extend(keys)
            chunk.values.extend(values)
        return pb.Response(request_id=session.request_id, bootstrap=chunk)

    def _close(self, session: BootstrapSession) -> None:
        self._sessions.pop(session.session_id, None)
        session.snapshot.close()
