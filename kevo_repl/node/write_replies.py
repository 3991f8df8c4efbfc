"""How a primary answers committed writes: one frame per connection and group for those
that wait for no follower (``WriteReplies`` where the client reads them), a token parked in
the registry for those that wait."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.node.group_commit import CommittedWrite
from kevo_repl.wire.envelope import encode_write_replies, encode_write_reply

__all__ = ["Replies", "WaitToken", "absent_in"]


@dataclass(frozen=True, slots=True)
class WaitToken:
    peer: bytes
    request_id: int
    first_lsn: int
    last_lsn: int
    deletes_absent: int = 0


def absent_in(absent: list[int], first: int, last: int) -> int:
    """How many of the sorted ``absent`` LSNs lie in ``first..last``."""
    return bisect.bisect_right(absent, last) - bisect.bisect_left(absent, first) if absent else 0


class Replies:
    """A group's answers to writes that wait for no follower: one frame per connection that
    reads ``WriteReplies`` (one send for all its writes in the group), one each otherwise."""

    __slots__ = ("by_peer", "single")

    def __init__(self) -> None:
        self.by_peer: dict[bytes, list[tuple[int, int, int, int]]] = {}
        self.single: list[tuple[bytes, bytes]] = []

    def add(
        self, c: CommittedWrite, gone: int, retries: list[tuple[bytes, int]], original: bool = True
    ) -> None:
        w = c.write
        if original:
            if w.coalesce:
                self.by_peer.setdefault(w.peer, []).append((w.request_id, *c.lsns, gone))
            else:
                self.single.append((w.peer, encode_write_reply(w.request_id, *c.lsns, gone)))
        for peer, rid in retries:  # a retry's request may come from an older client
            self.single.append((peer, encode_write_reply(rid, *c.lsns, gone)))

    def send(self, send: Callable[[bytes, bytes], None]) -> None:
        for peer, frame in self.single:
            send(peer, frame)
        for peer, answers in self.by_peer.items():
            if len(answers) == 1:
                send(peer, encode_write_reply(*answers[0]))
            else:
                send(peer, encode_write_replies(answers))
