"""``kevo_repl.Client``: put / delete / batch / get / status / digest against any node.

A node is addressed as ``HOST:P`` (its PUB port, as printed by ``kevo-repl``); requests go to
its ROUTER on P+1 over one DEALER. Every call has a deadline, so an unreachable node raises
``NodeUnreachableError`` instead of hanging. A write sent to a replica is refused with
``ERROR_NOT_PRIMARY`` naming the primary; the client follows that once, by itself.

Every batch is idempotent: a client has a random 16-byte ``client_id`` and numbers its
batches (``seq``), so a batch resent after a lost answer (``mark_retry``) is answered by the
primary with its original LSNs instead of being written twice (docs/protocol.md, "Idempotent
retry window"). Puts and deletes are not numbered.

Example::

    with Client("127.0.0.1:7100") as c:
        lsn = c.put(b"k", b"v", wait_replicas=1, timeout_ms=1000).lsn
    with Client("127.0.0.1:7110") as r:  # a replica: read your write once it has applied it
        assert r.get(b"k", min_lsn=lsn, timeout_ms=1000) == b"v"
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from types import TracebackType

import zmq

from kevo_repl.adapters.connect_watch import ConnectWatch, UnresolvableHostError, resolve
from kevo_repl.adapters.security import ClientCurve
from kevo_repl.adapters.zmq_io import SocketOptions, connect_socket, endpoint
from kevo_repl.client_types import (
    Digest,
    NodeUnreachableError,
    PipelineTimeoutError,
    RemoteError,
    RequestTooLargeError,
    ValueTooLargeError,
    WriteResult,
    batch_request,
    check_entry,
    mark_retry,
    parse_node,
)
from kevo_repl.node_status import NodeStatus
from kevo_repl.wire import pb
from kevo_repl.wire.batch import DEFAULT_LIMITS, WireError
from kevo_repl.wire.envelope import decode_response, split_write_replies

__all__ = [
    "Client",
    "Digest",
    "NodeUnreachableError",
    "PipelineTimeoutError",
    "RemoteError",
    "RequestTooLargeError",
    "UnresolvableHostError",
    "ValueTooLargeError",
    "WriteResult",
    "batch_request",
    "check_entry",
    "mark_retry",
    "parse_node",
]


class Client:
    """A synchronous client; not thread-safe (one DEALER, like every ZeroMQ socket)."""

    def __init__(
        self,
        node: str,
        *,
        timeout_ms: int = 5000,
        follow_redirects: bool = True,
        curve: ClientCurve | None = None,
    ) -> None:
        self.node = node
        self.timeout_ms = timeout_ms
        self.follow_redirects = follow_redirects
        self.curve = curve
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._ids = itertools.count(1)
        self.client_id = os.urandom(16)  # names this client's batches to the retry window
        self._seqs = itertools.count(1)
        self.seen_lsn = 0  # the highest LSN a write or status answer showed us
        self._read_token = 0
        self._unread: deque[pb.Response] = deque()  # the rest of a WriteReplies frame
        self._watch: ConnectWatch | None = None
        self._sock = self._connect(node)

    # ---- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._sock.close(0)

    # ---- writes ------------------------------------------------------------------------------

    def put(
        self, key: bytes, value: bytes, *, wait_replicas: int = 0, timeout_ms: int = 0
    ) -> WriteResult:
        check_entry(key, value)
        body = pb.PutRequest(
            key=key, value=value, wait_replicas=wait_replicas, timeout_ms=timeout_ms
        )
        return self._write(pb.Request(put=body), timeout_ms)

    def delete(self, key: bytes, *, wait_replicas: int = 0, timeout_ms: int = 0) -> WriteResult:
        body = pb.DeleteRequest(key=key, wait_replicas=wait_replicas, timeout_ms=timeout_ms)
        return self._write(pb.Request(delete=body), timeout_ms)

    def batch(
        self,
        entries: Iterable[tuple[bytes, bytes | None]],
        *,
        wait_replicas: int = 0,
        timeout_ms: int = 0,
    ) -> WriteResult:
        """One atomic batch: ``(key, value)`` puts, ``(key, None)`` deletes."""
        return self._write(self.batch_request(entries, wait_replicas, timeout_ms), timeout_ms)

    def batch_request(
        self,
        entries: Iterable[tuple[bytes, bytes | None]],
        wait_replicas: int = 0,
        timeout_ms: int = 0,
    ) -> pb.Request:
        """A batch request with this client's id and next seq, for ``call_many``; resend
        the same object (after ``mark_retry``) to have it answered, not written, again."""
        return batch_request(
            entries,
            wait_replicas,
            timeout_ms,
            client_id=self.client_id,
            seq=next(self._seqs),
            seen_lsn=self.seen_lsn,
        )

    # ---- reads -------------------------------------------------------------------------------

    def get(self, key: bytes, *, min_lsn: int = 0, timeout_ms: int = 0) -> bytes | None:
        """The value, or None when absent. ``min_lsn`` waits for read-your-writes."""
        value, _ = self.get_with_lsn(key, min_lsn=min_lsn, timeout_ms=timeout_ms)
        return value

    def get_with_lsn(
        self, key: bytes, *, min_lsn: int = 0, timeout_ms: int = 0
    ) -> tuple[bytes | None, int]:
        body = pb.GetRequest(key=key, min_lsn=min_lsn, timeout_ms=timeout_ms)
        resp = self.call(pb.Request(get=body), extra_ms=timeout_ms).get
        return (resp.value if resp.found else None), resp.lsn

    def status(self) -> NodeStatus:
        """The node's state, typed (history ids as hex; the same names as ``status --json``)."""
        return NodeStatus.from_message(self.status_message())

    def status_message(self) -> pb.StatusResponse:
        """The raw ``StatusResponse``."""
        return self.call(pb.Request(status=pb.StatusRequest())).status

    def digest(self) -> Digest:
        d = self.call(pb.Request(digest=pb.DigestRequest())).digest
        return Digest(d.lsn, d.keys, d.digest.hex())

    def wal_sync(self, from_lsn: int, max_bytes: int = 1 << 20) -> pb.WalSyncResponse:
        """Raw WAL records from the batch holding ``from_lsn`` on (primary only).

        Raises ``RemoteError`` with ``ERROR_TOO_OLD`` (and ``retained_from_lsn``) when the WAL
        no longer holds ``from_lsn``; a replica answers ``ERROR_BAD_REQUEST``.
        """
        req = pb.Request(wal_sync=pb.WalSyncRequest(from_lsn=from_lsn, max_bytes=max_bytes))
        return self.call(req).wal_sync

    def lsn_at_time(self, time_us: int) -> pb.LsnAtTimeResponse:
        """The first LSN the node's WAL holds as committed at or after ``time_us`` (``lsn``
        0: none yet), with its last and first retained LSN (docs/protocol.md, LsnAtTime)."""
        return self.call(pb.Request(lsn_at_time=pb.LsnAtTimeRequest(time_us=time_us))).lsn_at_time

    def snapshot_stream(
        self,
        *,
        backup: bool = False,
        prefix: bytes = b"",
        chunk_bytes: int = 256 * 1024,
        window: int = 8,
    ) -> Generator[pb.BootstrapChunk, None, None]:
        """Chunks of one consistent snapshot of the node, in key order, with credit.

        ``backup``: the whole store over the bootstrap stream (the ``admin`` or ``replica``
        role); otherwise a scan of the keys starting with ``prefix`` (any reader). The node
        sends at most ``window`` chunks ahead of what we read; closing the iterator early
        ends the node's session (and releases its snapshot) at once.
        """
        if backup:
            first = pb.Request(
                bootstrap=pb.BootstrapRequest(credit=window, chunk_bytes=chunk_bytes, backup=True)
            )
        else:
            first = pb.Request(
                scan=pb.ScanRequest(credit=window, chunk_bytes=chunk_bytes, prefix=prefix)
            )
        first.request_id = next(self._ids)
        self._send(first)
        session = 0
        done = False
        try:
            while not done:
                chunk = self._await(first.request_id, self.timeout_ms).bootstrap
                session, done = chunk.session_id, chunk.is_last
                yield chunk
                if not done:
                    self._send(self._grant(backup, session, 1, cancel=False))
        finally:
            if session and not done:
                self._send(self._grant(backup, session, 0, cancel=True))

    def _grant(self, backup: bool, session: int, credit: int, cancel: bool) -> pb.Request:
        if backup:
            req = pb.Request(
                bootstrap=pb.BootstrapRequest(session_id=session, credit=credit, cancel=cancel)
            )
        else:
            req = pb.Request(scan=pb.ScanRequest(session_id=session, credit=credit, cancel=cancel))
        req.request_id = next(self._ids)
        return req

    def to(self, node: str, *, follow_redirects: bool = True) -> Client:
        """A client of another node with our settings, and that node's CURVE key (the
        server key given for this node is this node's alone)."""
        curve = self.curve.for_node(node) if self.curve and node != self.node else self.curve
        other = Client(
            node, timeout_ms=self.timeout_ms, follow_redirects=follow_redirects, curve=curve
        )
        other.seen_lsn = self.seen_lsn  # still an LSN seen before its batches are sent
        return other

    def primary_address(self) -> str:
        """``HOST:PORT`` of the primary: this node itself, or the one a replica follows."""
        s = self.status_message()
        if s.role == pb.ROLE_PRIMARY:
            return self.node
        if not s.primary:
            raise RemoteError(pb.ERROR_UNAVAILABLE, f"{self.node} does not name its primary")
        return s.primary

    # ---- plumbing ----------------------------------------------------------------------------

    def call(self, req: pb.Request, *, extra_ms: int = 0) -> pb.Response:
        """Send one request and wait for its response; raises on Error or timeout."""
        req.request_id = next(self._ids)
        self._send(req)
        return self._await(req.request_id, self.timeout_ms + extra_ms)

    def _await(self, request_id: int, deadline_ms: int) -> pb.Response:
        """The next answer to ``request_id``; raises on Error or silence (saying why)."""
        while True:
            if not self._unread and not self._sock.poll(deadline_ms, zmq.POLLIN):
                why = self._why_silent(deadline_ms)
                self._reset()
                raise NodeUnreachableError(why)
            resp = self._recv()
            if resp.request_id != request_id:
                continue  # a late answer to an earlier, timed-out request
            if resp.WhichOneof("body") == "error":
                e = resp.error
                raise RemoteError(e.code, e.message, e.primary, e.retained_from_lsn)
            return resp

    def call_many(self, requests: Sequence[pb.Request], *, window: int = 64) -> list[pb.Response]:
        """Pipeline requests with up to ``window`` in flight; responses in request order.

        Error responses are returned, not raised, so one refused write does not hide the
        outcome of the others. If the node falls silent, raises ``PipelineTimeoutError``
        holding the responses that did arrive and telling sent from unsent requests.
        """
        first_id = next(self._ids)
        ids = itertools.count(first_id)
        self._ids = itertools.count(first_id + len(requests))  # never reused, even on error
        out: dict[int, pb.Response] = {}
        sent = 0
        while len(out) < len(requests):
            while sent < len(requests) and sent - len(out) < window:
                req = requests[sent]
                req.request_id = next(ids)
                self._send(req)
                sent += 1
            if not self._unread and not self._sock.poll(self.timeout_ms, zmq.POLLIN):
                why = self._why_silent(self.timeout_ms)
                self._reset()
                raise PipelineTimeoutError(
                    why,
                    [out.get(first_id + i) for i in range(sent)],
                )
            resp = self._recv()
            index = resp.request_id - first_id
            if not 0 <= index < len(requests):
                continue  # a late answer to an earlier call
            if resp.WhichOneof("body") == "error" and resp.error.code == pb.ERROR_UNREAD_REPLIES:
                # Large answers we had not read yet when this request left (a pipelined Get of
                # a big value): everything before it is read now, so ask again, with the
                # token that proves it. Only large replies are refused so: reads, never writes.
                self._send(requests[index])
                continue
            out[resp.request_id] = resp
        return [out[first_id + i] for i in range(len(requests))]

    def _write(self, req: pb.Request, timeout_ms: int) -> WriteResult:
        try:
            resp = self.call(req, extra_ms=timeout_ms)
        except RemoteError as exc:
            if not (exc.code == pb.ERROR_NOT_PRIMARY and exc.primary and self.follow_redirects):
                raise
            with self.to(exc.primary, follow_redirects=False) as c:
                resp = c.call(req, extra_ms=timeout_ms)
        w = resp.write
        return WriteResult(
            w.lsn, w.first_lsn, w.replicas_applied, w.wait_timed_out, w.deletes_absent
        )

    def _connect(self, node: str) -> zmq.Socket[bytes]:
        host, port = parse_node(node)
        resolve(host, port + 1)  # a name that does not resolve would only ever time out
        where = endpoint(host, port + 1)

        def prepare(sock: zmq.Socket[bytes]) -> None:  # watch from before the connect
            if self.curve:
                self.curve.apply(sock)
            self._watch = ConnectWatch(sock, where, self.curve is not None)

        return connect_socket(self._ctx, zmq.DEALER, host, port + 1, SocketOptions(), prepare)

    def _why_silent(self, waited_ms: int) -> str:
        if self._watch is None:
            return f"no answer from {self.node} within {waited_ms} ms"
        return self._watch.explain(self.node, waited_ms)

    def _send(self, req: pb.Request) -> None:
        req.read_token = self._read_token  # proof we read the last large reply (see protocol)
        req.coalesce_replies = True  # pipelined writes may come back in one frame
        frame = req.SerializeToString()
        if len(frame) > DEFAULT_LIMITS.max_request_bytes:
            raise RequestTooLargeError(
                f"request of {len(frame)} bytes, over the node's limit of "
                f"{DEFAULT_LIMITS.max_request_bytes} bytes per request (values may be up to "
                f"{DEFAULT_LIMITS.max_value_bytes} bytes, keys up to "
                f"{DEFAULT_LIMITS.max_key_bytes}); split it into smaller batches"
            )
        self._sock.send(frame)

    def _recv(self) -> pb.Response:
        """The next response; a ``WriteReplies`` frame yields one per write it answers."""
        if self._unread:
            return self._unread.popleft()
        try:
            resp, *rest = split_write_replies(decode_response(self._sock.recv()))
        except WireError as exc:
            raise RemoteError(pb.ERROR_BAD_REQUEST, f"unreadable response: {exc}") from exc
        self._unread.extend(rest)
        if resp.read_token:
            self._read_token = resp.read_token
        body = resp.WhichOneof("body")
        if body == "write":
            self.seen_lsn = max(self.seen_lsn, resp.write.lsn)
        elif body == "status":
            self.seen_lsn = max(self.seen_lsn, resp.status.lsn)
        return resp

    def _reset(self) -> None:
        self._read_token = 0
        self._unread.clear()
        self.close()
        self._sock = self._connect(self.node)
