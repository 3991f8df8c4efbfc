"""pyzmq's ZAP thread for a CURVE node, telling who it refused.

Its own module because ``zmq.auth.thread`` imports asyncio (6.6 MiB of RSS): only a node
with ``--keys`` loads it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import zmq
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["RefusedHandshake", "TellingAuthenticator"]


@dataclass(frozen=True, slots=True)
class RefusedHandshake:
    peer: str  # the client's IP address, as ZAP sees it
    key: str  # the z85 public key it offered
    reason: str


class TellingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, which also tells who it refused (the peer address lives in the
    ZAP request, which the credentials callback never sees)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], refused: deque[RefusedHandshake]):
        super().__init__(ctx)
        self._refused = refused
        self._request: tuple[str, str] = ("", "")

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        peer = msg[3].decode("ascii", "replace") if len(msg) > 3 else "?"
        peer = peer.removeprefix("::ffff:")  # an IPv4 peer of a dual-stack socket
        key = zmq.utils.z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else ""
        self._request = (peer, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        if status_code != b"200":
            peer, key = self._request
            reason = "key not in authorized_keys" if key else status_text.decode("ascii", "replace")
            self._refused.append(RefusedHandshake(peer, key, reason))  # deque: thread-safe
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
