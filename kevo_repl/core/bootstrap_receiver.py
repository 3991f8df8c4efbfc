"""The replica's side of one bootstrap stream: sequence checks and credit, nothing else.

A bootstrap arrives as numbered chunks that the primary sends only against credit. This
object checks that chunks come in order from one session and decides when to grant more
credit (whenever half of it is used), so the primary never has more than ``credit`` chunks
in flight to this replica. The follower owns what a finished or broken stream means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["BootstrapReceiver", "ChunkVerdict"]


class ChunkVerdict(Enum):
    ACCEPT = "accept"  # write it; more to come
    LAST = "last"  # write it and install: the snapshot is complete
    BROKEN = "broken"  # out of order or another session: start over on a fresh socket


@dataclass(slots=True)
class BootstrapReceiver:
    credit: int  # chunks the primary may send before the next grant
    session_id: int = 0
    next_seq: int = 0
    credit_left: int = 0
    progress: float = 0.0

    def __post_init__(self) -> None:
        self.credit_left = self.credit

    def accept(self, session_id: int, seq: int, progress: float, is_last: bool) -> ChunkVerdict:
        if self.session_id == 0 and seq == 0:
            self.session_id = session_id  # the first chunk names the session
        if session_id != self.session_id or seq != self.next_seq:
            return ChunkVerdict.BROKEN
        self.next_seq += 1
        self.credit_left -= 1
        self.progress = progress
        return ChunkVerdict.LAST if is_last else ChunkVerdict.ACCEPT

    def grant(self) -> int:
        """Credit to grant now (0: not yet): the unused half is topped up to ``credit``."""
        if self.credit_left > self.credit // 2:
            return 0
        grant = self.credit - self.credit_left
        self.credit_left += grant
        return grant
