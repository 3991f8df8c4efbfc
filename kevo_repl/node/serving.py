"""A node's serving side: PUB on P and ROUTER on P+1, optionally CURVE-secured.

Shared by primary and replica. With security, every request arrives with the peer's CURVE key
(ZAP User-Id) and is checked against that key's role; a key reload that revokes keys rebinds
both sockets, which cuts every session at once; listed peers reconnect through ZAP, revoked
ones no longer pass it.

What a peer can make the node hold is bounded here (docs/security.md): the PUB queues at most
``pub_hwm`` frames per subscriber and publishes only records up to the stream's frame limit
(``publish_record``); the ROUTER queues at most ``ROUTER_SNDHWM`` replies per peer, of which
the large ones stay within the peer's ``ReplyBudget`` (``reply``), and takes at most
``ROUTER_RCVHWM`` requests per peer before TCP pushes back.

Every error answer leaves through here (``send_error``, or an ``Error`` body given to
``reply``), so it is counted by code once, for ``--metrics-port``.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from kevo_repl.adapters.security import ServerSecurity
from kevo_repl.adapters.zmq_io import (
    SocketOptions,
    bind_socket,
    recv_frames_nowait,
    recv_frames_with_user_nowait,
    send_nowait,
)
from kevo_repl.core.errors import TransportError
from kevo_repl.node.reply_budget import ReplyBudget
from kevo_repl.node.stats import NodeStats
from kevo_repl.wire import pb
from kevo_repl.wire.envelope import TOPIC_WAL, TOPIC_ZSTD, error_response

__all__ = ["ROUTER_RCVHWM", "ROUTER_SNDHWM", "ServingSockets"]

ROUTER_SNDHWM = 1000  # replies queued per peer (small ones; large ones are in the budget)
ROUTER_RCVHWM = 1000  # requests queued per peer before libzmq stops reading its connection


class ServingSockets:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        bind: str,
        port: int,
        *,
        pub_hwm: int,
        max_request_bytes: int,
        max_stream_record_bytes: int,
        security: ServerSecurity | None,
        log: Any,
        stats: NodeStats | None = None,
    ) -> None:
        self._ctx = ctx
        self._bind = bind
        self._port = port
        self._pub_opts = SocketOptions(sndhwm=pub_hwm, max_msg_bytes=max_request_bytes)
        self._router_opts = SocketOptions(
            sndhwm=ROUTER_SNDHWM, rcvhwm=ROUTER_RCVHWM, max_msg_bytes=max_request_bytes
        )
        self.max_stream_record_bytes = max_stream_record_bytes
        self.security = security
        self.budget = ReplyBudget()
        self._log = log
        self.stats = stats if stats is not None else NodeStats()
        self.pub, self.router = self._bind_both()

    def _bind_both(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        prepare = self.security.apply if self.security else None
        pub = bind_socket(self._ctx, zmq.PUB, self._bind, self._port, self._pub_opts, prepare)
        try:
            router = bind_socket(
                self._ctx, zmq.ROUTER, self._bind, self._port + 1, self._router_opts, prepare
            )
        except TransportError:
            pub.close(0)
            raise
        return pub, router

    def recv(self) -> tuple[bytes, bytes, str] | None:
        """One request as (peer, frame, user id); malformed envelopes are skipped."""
        while True:
            if self.security is None:
                frames = recv_frames_nowait(self.router, 2)
                user = ""
                if frames is None:
                    return None
            else:
                got = recv_frames_with_user_nowait(self.router, 2)
                if got is None:
                    return None
                frames, user = got
            if len(frames) == 2:  # ROUTER adds the peer frame; anything else is not ours
                return frames[0], frames[1], user

    # ---- sending ------------------------------------------------------------------------------

    def send(self, peer: bytes, frame: bytes) -> bool:
        """A small reply (an error, a write's answer); False if the peer cannot take it."""
        return send_nowait(self.router, [peer, frame])

    def send_error(
        self,
        peer: bytes,
        request_id: int,
        code: pb.ErrorCode.ValueType,
        message: str,
        *,
        primary: str = "",
        retained_from_lsn: int = 0,
    ) -> bool:
        """An ``Error`` answer (``error_response``), counted by its code."""
        self.stats.error(code)
        frame = error_response(
            request_id, code, message, primary=primary, retained_from_lsn=retained_from_lsn
        )
        return self.send(peer, frame)

    def reply(self, peer: bytes, resp: pb.Response) -> bool | None:
        """Send a reply within the peer's budget of unread bytes.

        Returns True when queued, False when the peer is gone or its queue is full, and None
        when the reply is large and the peer has not read enough of the earlier ones: the
        caller keeps it for later (a bootstrap chunk) or refuses the request.
        """
        size = resp.ByteSize()
        budget = self.budget
        if not budget.allows(peer, size):
            return None
        if resp.WhichOneof("body") == "error":  # a digest or a snapshot stream that failed
            self.stats.error(resp.error.code)
        token = budget.stamp(peer, size)
        if token:
            resp.read_token = token
        if self.send(peer, resp.SerializeToString()):
            return True
        if token:
            budget.unsent(peer, token)
        return False

    def reply_or_refuse(self, peer: bytes, resp: pb.Response) -> None:
        """``reply``, answering ``ERROR_UNREAD_REPLIES`` when the budget is spent."""
        if self.reply(peer, resp) is None:
            unread = self.budget.unread_bytes(peer)
            msg = (
                f"{unread} bytes of earlier replies to this connection are unread; read them "
                "and send the read_token of the last one"
            )
            self.send_error(peer, resp.request_id, pb.ERROR_UNREAD_REPLIES, msg)

    def confirm(self, peer: bytes, read_token: int) -> None:
        if read_token:
            self.budget.confirm(peer, read_token)

    def publish_record(self, record: bytes, compressed: bytes | None = None) -> bool:
        """Publish a WAL record on the stream (and its zstd frame on topic Z, for the
        followers that asked for it); False (not sent) when it is over the stream's frame
        limit, so followers fetch it by WalSync: the caller beacons at once."""
        if len(record) > self.max_stream_record_bytes:
            return False
        frame = TOPIC_WAL + record
        self.pub.send(frame, zmq.DONTWAIT, copy=len(frame) < 65536)
        if compressed is not None:
            self.pub.send(TOPIC_ZSTD + compressed, zmq.DONTWAIT)
        return True

    def allowed(self, user: str, kind: str) -> bool:
        return self.security is None or self.security.allowed(user, kind)

    def sees_followers(self, user: str) -> bool:
        return self.security is None or self.security.sees_followers(user)

    def key_name(self, user: str) -> str:
        return self.security.ring.name(user) if self.security else ""

    def reload_keys(self) -> None:
        """SIGHUP: re-read authorized keys; cut every session if a key was revoked."""
        if self.security is None:
            return
        try:
            revoked = self.security.ring.reload()
        except Exception as exc:  # a broken file keeps the old list: never lock everyone out
            self._log.error("keys_reload_failed", error=str(exc))
            return
        self._log.info("keys_reloaded", keys=len(self.security.ring), revoked=len(revoked))
        if revoked:
            self.rebind()

    def rebind(self) -> None:
        self.pub.close(0)
        self.router.close(0)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.pub, self.router = self._bind_both()
                return
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # the closed sockets release their ports asynchronously

    def close(self) -> None:
        self.pub.close(0)
        self.router.close(0)
        if self.security is not None:
            self.security.close()
