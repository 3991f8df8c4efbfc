"""A node's serving side: PUB on P and ROUTER on P+1, optionally CURVE-secured.

Shared by primary and replica. With security, every request arrives with the peer's CURVE key
(ZAP User-Id) and is checked against that key's role; a key reload that revokes keys rebinds
both sockets, which cuts every session at once; listed peers reconnect through ZAP, revoked
ones no longer pass it.
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
)
from kevo_repl.core.errors import TransportError

__all__ = ["ServingSockets"]


class ServingSockets:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        bind: str,
        port: int,
        *,
        pub_hwm: int,
        max_request_bytes: int,
        security: ServerSecurity | None,
        log: Any,
    ) -> None:
        self._ctx = ctx
        self._bind = bind
        self._port = port
        self._pub_opts = SocketOptions(sndhwm=pub_hwm, max_msg_bytes=max_request_bytes)
        self._router_opts = SocketOptions(max_msg_bytes=max_request_bytes)
        self.security = security
        self._log = log
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

    def allowed(self, user: str, kind: str) -> bool:
        return self.security is None or self.security.allowed(user, kind)

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
