"""A per-peer budget of reply bytes the peer has not yet proven it read.

ZeroMQ bounds a ROUTER's queue to one peer in messages (SNDHWM), not bytes: a peer that
pipelines large requests (WalSync of 16 MiB, bootstrap credit, big values) and never reads
would make the node queue gigabytes for it. So every large reply carries a random
``read_token``, and the peer echoes the token of the last reply it read in its next request
(``Request.read_token``), which frees the bytes of that reply and of every earlier one (one
connection delivers replies in order). A peer cannot echo a token it never read, so the
bytes of large replies queued for it never exceed ``budget_bytes`` (plus one reply, so a
single reply larger than the budget can still be served). Small replies are not counted:
SNDHWM times ``small_reply_bytes`` bounds them. The honest clients, followers and ``tail``
read each reply before asking again, so they never meet the limit.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["DEFAULT_BUDGET_BYTES", "SMALL_REPLY_BYTES", "ReplyBudget"]

SMALL_REPLY_BYTES = 16 * 1024
DEFAULT_BUDGET_BYTES = 32 * 1024 * 1024
MAX_PEERS = 65536  # peers tracked at once; the least recently active is forgotten first
_UNLIMITED = 1 << 62


@dataclass(slots=True)
class _Unread:
    tokens: deque[tuple[int, int]] = field(default_factory=deque)  # (token, bytes), in order
    total: int = 0


@dataclass(slots=True)
class ReplyBudget:
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    small_reply_bytes: int = SMALL_REPLY_BYTES
    max_peers: int = MAX_PEERS
    _peers: OrderedDict[bytes, _Unread] = field(default_factory=OrderedDict)

    def confirm(self, peer: bytes, token: int) -> None:
        """``peer`` read the reply stamped ``token``: free it and every earlier one."""
        unread = self._peers.get(peer)
        if unread is None or not any(t == token for t, _ in unread.tokens):
            return  # a token we never issued (or already freed) proves nothing
        while unread.tokens:
            t, size = unread.tokens.popleft()
            unread.total -= size
            if t == token:
                break
        if not unread.tokens:
            del self._peers[peer]

    def unread_bytes(self, peer: bytes) -> int:
        unread = self._peers.get(peer)
        return unread.total if unread is not None else 0

    def room(self, peer: bytes) -> int:
        """Bytes of large replies ``peer`` may still be sent now (at least one reply's worth
        when nothing is unread: the budget never blocks a peer that read everything)."""
        unread = self.unread_bytes(peer)
        return self.budget_bytes - unread if unread else _UNLIMITED

    def allows(self, peer: bytes, size: int) -> bool:
        return size <= self.small_reply_bytes or size <= self.room(peer)

    def stamp(self, peer: bytes, size: int) -> int:
        """A token for a reply of ``size`` bytes about to be sent (0 for a small reply)."""
        if size <= self.small_reply_bytes:
            return 0
        token = secrets.randbits(63) | 1
        unread = self._peers.get(peer)
        if unread is None:
            if len(self._peers) >= self.max_peers:
                self._peers.popitem(last=False)
            unread = self._peers[peer] = _Unread()
        else:
            self._peers.move_to_end(peer)
        unread.tokens.append((token, size))
        unread.total += size
        return token

    def unsent(self, peer: bytes, token: int) -> None:
        """The stamped reply could not be queued (peer gone, queue full): do not count it."""
        unread = self._peers.get(peer)
        if unread is None or not unread.tokens or unread.tokens[-1][0] != token:
            return
        _, size = unread.tokens.pop()
        unread.total -= size
        if not unread.tokens:
            del self._peers[peer]
