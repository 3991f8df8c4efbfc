"""Writes parked until enough followers hold them (``wait_replicas``, the sync policy).

Kept per requested count in LSN order (commits come in order), so an advance releases
them in O(released); deadlines live in a heap, so expiry is O(expired). Finished entries
linger in the heap until they outnumber the live ones, then are compacted, so memory stays
proportional to the parked writes (capped by the caller at ``max_waiters``).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["WaitResult", "WriteWaiters"]


@dataclass(frozen=True, slots=True)
class WaitResult:
    token: object
    replicas_applied: int
    timed_out: bool


@dataclass(slots=True)
class _Waiter:
    token: object
    lsn: int
    replicas: int
    deadline_ms: int
    done: bool = False


@dataclass(slots=True)
class WriteWaiters:
    _waiting: dict[int, deque[_Waiter]] = field(default_factory=dict)  # by replica count
    _deadlines: list[tuple[int, int, _Waiter]] = field(default_factory=list)  # a heap
    _seq: int = 0
    count: int = 0  # writes parked now

    def park(self, token: object, lsn: int, replicas: int, deadline_ms: int) -> None:
        waiter = _Waiter(token, lsn, replicas, deadline_ms)
        queue = self._waiting.setdefault(replicas, deque())
        if queue and queue[-1].lsn > lsn:  # not in commit order: keep the queue sorted
            items = sorted([*queue, waiter], key=lambda w: w.lsn)
            queue.clear()
            queue.extend(items)
        else:
            queue.append(waiter)
        self._seq += 1
        heapq.heappush(self._deadlines, (deadline_ms, self._seq, waiter))
        self.count += 1

    def release(self, held: list[int]) -> list[WaitResult]:
        """Waiters that enough followers hold; ``held`` is each counted follower's held LSN,
        ascending."""
        done: list[WaitResult] = []
        for wanted, queue in self._waiting.items():
            if wanted > len(held):
                continue
            reached = held[-wanted]  # the wanted-th highest held LSN
            while queue and (queue[0].done or queue[0].lsn <= reached):
                waiter = queue.popleft()
                if waiter.done:
                    continue
                waiter.done = True
                self.count -= 1
                applied = len(held) - bisect.bisect_left(held, waiter.lsn)
                done.append(WaitResult(waiter.token, applied, timed_out=False))
        for wanted in [k for k, q in self._waiting.items() if not q]:
            del self._waiting[wanted]
        return done

    def expire(self, now_ms: int, holders: Callable[[int], int]) -> list[WaitResult]:
        """Waiters past their deadline, with ``holders(lsn)`` followers counted as holding."""
        done: list[WaitResult] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            waiter = heapq.heappop(heap)[2]
            if not waiter.done:
                waiter.done = True
                self.count -= 1
                done.append(WaitResult(waiter.token, holders(waiter.lsn), True))
        if len(heap) > 2 * self.count + 1024:  # finished waiters linger: drop them
            self._deadlines = [e for e in heap if not e[2].done]
            heapq.heapify(self._deadlines)
            for wanted, queue in self._waiting.items():
                self._waiting[wanted] = deque(w for w in queue if not w.done)
        return done
