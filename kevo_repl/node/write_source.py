"""A primary's records: client writes, validated, group-committed, answered.

Writes are checked and queued (``queue_write``); each loop turn the group whose fdatasync
finished is published and its writers answered (now, or once enough followers have it:
``wait_replicas``), the next group is written and its fdatasync started, and only then is the
finished group applied to the store, in the same turn (``GroupCommitter``). With
``--fsync interval`` a writer is answered when its record is written, before the
fdatasync; its record still reaches followers only once durable, and a read of a key such a
write touched waits until it is applied (``read_fence``). A failed WAL write or fdatasync
answers every waiting writer ``ERROR_OUTCOME_UNKNOWN`` and stops the node.

A batch with a client id and seq is checked against the retry window first (``retry_guard``):
a retry of a committed batch gets its original LSNs, one of a batch still pending is
answered with it; neither is written again, and neither is refused by ``--sync-refuse``
(which says nothing was written).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zmq

from kevo_repl.adapters.clock import monotonic_ms, wall_us
from kevo_repl.core.errors import StorageError
from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.core.registry import WaitResult
from kevo_repl.node.config import POLL_MS
from kevo_repl.node.group_commit import (
    RECORD_OVERHEAD_BYTES,
    CommittedWrite,
    GroupCommitter,
    PendingWrite,
)
from kevo_repl.node.parked_reads import MAX_WAIT_MS
from kevo_repl.node.retry_guard import RetryGuard, payload_hash, rebuild_window
from kevo_repl.node.write_replies import Replies, WaitToken, absent_in
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError, WireLimits, encode_single, parse_client_batch
from kevo_repl.wire.envelope import encode_write_reply

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

_UNLEASED = "it does not hold the leader lease in etcd"  # the agent's deadline passed
WAIT_HOLD_MS = 1000  # followers stay eager this long after the last write that waits

__all__ = ["WriteSource"]


def _check_entry(key: bytes, value: bytes, limits: WireLimits) -> None:
    if not key:
        raise WireError("empty key")
    if len(key) > limits.max_key_bytes:
        msg = f"key of {len(key)} bytes, over the limit of {limits.max_key_bytes}"
        raise WireError(msg, pb.ERROR_TOO_LARGE)
    if len(value) > limits.max_value_bytes:
        msg = f"value of {len(value)} bytes, over the limit of {limits.max_value_bytes}"
        raise WireError(msg, pb.ERROR_TOO_LARGE)


class WriteSource:
    role: int = pb.ROLE_PRIMARY

    def __init__(self, node: Node) -> None:
        self.node = node
        limits = node.config.limits
        self.committer = GroupCommitter(
            node.wal,
            node.store,
            wall_us,
            node.stats,
            ack_before_sync=node.config.fsync != "always",
            record_target_bytes=limits.max_stream_record_bytes - RECORD_OVERHEAD_BYTES,
        )
        self.committer.committed_lsn = node.wal.last_lsn
        # Followers sync and ack every drain at once while writes wait for them, and on a
        # timer otherwise: said in beacons, on the rising edge at once (before the write's
        # record, on the same PUB), on the falling edge WAIT_HOLD_MS after the last such write.
        self.writes_waiting = node.config.sync_replicas > 0
        self._waits_until_ms = 0
        window = rebuild_window(node.wal, node.wal.last_lsn)
        self.retries = RetryGuard(window)
        node.log.info(
            "retry_window_rebuilt",
            batches=window.batches,
            clients=window.clients,
            floor_lsn=window.floor_lsn,
        )

    # ---- the node's questions ----------------------------------------------------------------

    @property
    def visible_lsn(self) -> int:
        return self.committer.committed_lsn

    @property
    def blocked(self) -> bool:
        return self.committer.backlogged

    def sockets(self) -> list[zmq.Socket[bytes]]:
        return []

    def on_ready(self, ready: dict[Any, int]) -> None:
        return None

    def read_fence(self, key: bytes) -> int:
        """An acknowledged write to ``key`` not yet applied (--fsync interval): wait for it."""
        return self.committer.unapplied.get(key, 0)

    def describe(self, status: pb.StatusResponse) -> None:
        node = self.node
        until = node.writes_until_ms
        unleased = until is not None and monotonic_ms() >= until
        status.status = pb.STATUS_READY
        status.primary = (
            node.fence_primary or (node.leader_hint if unleased else "") or node.address
        )
        status.fenced = node.fenced or (_UNLEASED if unleased else "")
        c = self.node.config
        status.sync.CopyFrom(
            pb.SyncPolicy(
                replicas=c.sync_replicas, timeout_ms=c.sync_timeout_ms, refuse=c.sync_refuse
            )
        )

    # ---- writes ------------------------------------------------------------------------------

    def queue_write(self, peer: bytes, req: pb.Request, kind: str) -> bool:
        """Check and queue one write; True when a full group is pending (commit it now)."""
        node = self.node
        until = node.writes_until_ms
        if node.fenced or (until is not None and monotonic_ms() >= until):
            why = node.fenced or _UNLEASED
            where = node.fence_primary or node.leader_hint
            msg = f"this primary accepts no writes: {why}" + (
                f"; send them to {where}" if where else ""
            )
            node.serving.send_error(peer, req.request_id, pb.ERROR_NOT_PRIMARY, msg, primary=where)
            return False
        limits = node.config.limits
        body: pb.PutRequest | pb.DeleteRequest | pb.BatchRequest
        digest = b""
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
            if body.client_id:
                digest = payload_hash(payload)
                if self._answered_as_retry(peer, req, digest):
                    return False
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
        config = node.config
        wait = max(min(body.wait_replicas, 1000), config.sync_replicas)
        if config.sync_refuse and config.sync_replicas:
            self._refuse_unconfirmable(config.sync_replicas)
        if wait:
            self._check_waiters()
            self._writes_wait()
        write = PendingWrite(
            peer,
            req.request_id,
            payload,
            len(keys),
            wait,
            min(body.timeout_ms or config.sync_timeout_ms, MAX_WAIT_MS),
            ops,
            keys,
            values,
            req.coalesce_replies,
        )
        if digest:
            write.client_id, write.seq, write.payload_hash = (
                req.batch.client_id,
                req.batch.seq,
                digest,
            )
            self.retries.accepted(write)
        return self.committer.add(write)

    def _check_waiters(self) -> None:
        followers = self.node.followers
        waiting = followers.waiters + self.committer.waiting_writes
        if waiting >= followers.max_waiters:
            raise WireError(
                f"{waiting} writes already wait for replicas (the limit is "
                f"{followers.max_waiters}); retry later or send fewer with wait_replicas",
                pb.ERROR_UNAVAILABLE,
            )

    def _answered_as_retry(self, peer: bytes, req: pb.Request, digest: bytes) -> bool:
        """A batch the window or the queue already holds: answer it as the original was."""
        body = req.batch
        found = self.retries.check(body, digest)
        if found is None:
            return False
        if isinstance(found, PendingWrite):
            found.also.append((peer, req.request_id))
            return True
        wait = max(min(body.wait_replicas, 1000), self.node.config.sync_replicas)
        if not wait:
            self._send(peer, encode_write_reply(req.request_id, found.first_lsn, found.last_lsn))
            return True
        self._check_waiters()  # a retry waits like a write (nothing was written: retry later)
        self._writes_wait()
        timeout = min(body.timeout_ms or self.node.config.sync_timeout_ms, MAX_WAIT_MS)
        token = WaitToken(peer, req.request_id, found.first_lsn, found.last_lsn)
        done = self.node.followers.wait_for(token, found.last_lsn, wait, monotonic_ms() + timeout)
        if done is not None:
            self.released([done])
        return True

    def _writes_wait(self) -> None:
        now = monotonic_ms()
        self._waits_until_ms = now + WAIT_HOLD_MS
        if not self.writes_waiting:
            self.writes_waiting = True
            self.node.stream.beacon(now)

    def _refuse_unconfirmable(self, needed: int) -> None:
        """``--sync-refuse``: while fewer followers than ``needed`` are connected a write
        could not be confirmed, so it is refused before anything is written (Redis's
        ``min-replicas-to-write``); a write accepted whose wait then times out was
        committed, and is answered so (``wait_timed_out``)."""
        live = self.node.followers.connected()
        if live < needed:
            raise WireError(
                f"this primary confirms every write on {needed} replica(s) (--sync-replicas "
                f"with --sync-refuse) and {live} are connected: nothing was written",
                pb.ERROR_UNAVAILABLE,
            )

    # ---- each turn ---------------------------------------------------------------------------

    def turn(self, now_ms: int) -> None:
        self._finish_groups()  # frees the slot the next group needs
        self._start_group()
        self._apply_finished(now_ms)  # overlaps the fdatasync just started

    def due_in_ms(self, now_ms: int) -> int:
        return POLL_MS  # a finished sync wakes the loop itself

    def _apply_finished(self, now_ms: int) -> None:
        """Store what was answered; before the loop handles any read, so reads see it."""
        if self.committer.applying:
            self.committer.apply_finished()
            self.node.requests.reads.release(now_ms)

    def tick(self, now_ms: int) -> None:
        """Say when writes stopped waiting; repair a store behind the WAL after a failed
        apply (the WAL is the truth)."""
        if (
            self.writes_waiting
            and now_ms >= self._waits_until_ms
            and not self.node.config.sync_replicas
            and not self.node.followers.waiters
        ):
            self.writes_waiting = False
            self.node.stream.beacon(now_ms)
        if not self.committer.store_error:
            return
        try:
            self.committer.catch_up_store()
            self.node.log.info("store_recovered", lsn=self.node.store.applied_lsn)
        except StorageError as exc:
            self.node.log.error("store_apply_failed", error=str(exc))

    def _start_group(self) -> None:
        try:
            flight = self.committer.start(self.node.wake)
        except StorageError as exc:
            self._wal_failed("wal_write_failed", exc)
            return
        if flight is not None and self.committer.ack_before_sync:
            replies = Replies()
            for c in flight.committed():  # writes that wait for no follower: answered now
                if not c.write.wait_replicas:
                    replies.add(c, 0, c.write.also)
                    c.write.also = []  # retries from now on are answered at the commit
            replies.send(self._send)

    def _finish_groups(self, wait: bool = False) -> None:
        try:
            done = self.committer.finish_ready(wait)
        except StorageError as exc:
            self._wal_failed("wal_sync_failed", exc)
            return
        for flight in done:
            now = monotonic_ms()
            self.retries.committed(flight.committed())
            self.node.stream.publish(
                [
                    (r.appended.first_lsn, r.appended.last_lsn, r.appended.record)
                    for r in flight.records
                ],
                now,
            )
            stats = self.node.stats  # taken to durable and published: the commit's latency
            stats.commit_seconds.observe(self.committer.clock_s() - flight.started_s)
            stats.group_entries.observe(flight.entries)
            self._answer(flight.committed(), now, flight.absent)

    def _answer(self, committed: list[CommittedWrite], now: int, absent: list[int]) -> None:
        registry = self.node.followers
        acked = self.committer.ack_before_sync
        replies = Replies()
        for c in committed:
            w = c.write
            gone = absent_in(absent, c.first_lsn, c.last_lsn)
            if not w.wait_replicas:
                if acked:  # answered at the write already, but for retries since
                    replies.add(c, gone, w.also, original=False)
                else:
                    replies.add(c, gone, w.also)
            else:
                for peer, rid in w.answerers():
                    token = WaitToken(peer, rid, c.first_lsn, c.last_lsn, gone)
                    done = registry.wait_for(token, c.last_lsn, w.wait_replicas, now + w.timeout_ms)
                    if done is not None:
                        self.released([done])
            w.also = []
        replies.send(self._send)

    def released(self, waits: list[WaitResult]) -> None:
        """Writes that enough followers applied, or whose wait timed out: answer them."""
        for done in waits:
            token = done.token
            assert isinstance(token, WaitToken)
            write = pb.WriteResponse(
                lsn=token.last_lsn,
                first_lsn=token.first_lsn,
                replicas_applied=done.replicas_applied,
                wait_timed_out=done.timed_out,
                deletes_absent=token.deletes_absent,
            )
            resp = pb.Response(request_id=token.request_id, write=write)
            self.node.serving.reply_or_refuse(token.peer, resp)

    def _wal_failed(self, event: str, exc: StorageError) -> None:
        """The WAL refused a write or a sync: the records written may or may not survive a
        restart, so every writer waiting is told the outcome is unknown, and the node stops
        (the WAL refuses all further work; a restart recovers it, as PostgreSQL does)."""
        msg = (
            f"the WAL failed ({exc}); this write may or may not have been committed: read it "
            "back once the primary is restarted"
        )
        writes = [w for f in self.committer.drop_in_flight() for w in f.writes()]
        writes += self.committer.take_pending()
        self.retries.dropped()
        for w in writes:
            for peer, rid in w.answerers():
                self.node.serving.send_error(peer, rid, pb.ERROR_OUTCOME_UNKNOWN, msg)
        self.node.log.error(event, error=str(exc), writes_with_unknown_outcome=len(writes))
        self.node.fail(f"{event}: {exc}")

    def _send(self, peer: bytes, frame: bytes) -> None:
        self.node.serving.send(peer, frame)

    def drain(self) -> None:
        """Commit and answer every write accepted so far (waiting for the syncs)."""
        if not self.node.failure:
            self._finish_groups(wait=True)
            while self.committer.pending and not self.node.failure:
                self._start_group()
                self._finish_groups(wait=True)
        self._apply_finished(monotonic_ms())

    def close(self) -> None:
        """Finish what is in flight and commit what is pending (a clean stop, a demotion)."""
        try:
            self.drain()
        finally:
            self.committer.close()
