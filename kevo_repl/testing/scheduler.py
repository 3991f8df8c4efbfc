"""Virtual time, the event queue and the trace ring of one simulated run.

Everything in a run happens inside ``Scheduler.run_until``: callbacks are popped in
(time, insertion order), so a seed replays bit for bit. No wall clock is ever read; the
integer millisecond ``now`` is the only time the simulated nodes see.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Scheduler", "TraceEvent"]

TraceEvent = tuple[int, str, str, dict[str, object]]
"""(time_ms, node, event, fields): one line of the trace."""


class Scheduler:
    """A discrete-event loop over integer milliseconds with a bounded trace of what happened."""

    def __init__(self, trace_len: int = 64) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._stopped = False
        self.trace: deque[TraceEvent] = deque(maxlen=trace_len)
        self.events_run = 0

    def at(self, time_ms: int, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at ``time_ms`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(time_ms, self.now), self._seq, fn, args))

    def after(self, delay_ms: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay_ms, fn, *args)

    def every(self, period_ms: int, fn: Callable[[], bool], first_ms: int | None = None) -> None:
        """Call ``fn`` every ``period_ms`` until it returns False."""

        def fire() -> None:
            if fn():
                self.after(period_ms, fire)

        self.at(self.now + period_ms if first_ms is None else first_ms, fire)

    def stop(self) -> None:
        """End ``run_until`` after the current callback."""
        self._stopped = True

    def run_until(self, end_ms: int) -> None:
        queue = self._queue
        while queue and not self._stopped:
            time_ms, _, fn, args = queue[0]
            if time_ms > end_ms:
                break
            heapq.heappop(queue)
            self.now = time_ms
            self.events_run += 1
            fn(*args)
        if not self._stopped:
            self.now = max(self.now, end_ms)

    def note(self, node: str, event: str, **fields: object) -> None:
        """Append to the trace ring (only the last ``trace_len`` events are kept)."""
        self.trace.append((self.now, node, event, fields))

    def format_trace(self, last: int = 12) -> list[str]:
        events = list(self.trace)[-last:]
        return [
            f"t={t}ms {node} {event} {_fields(fields)}".rstrip()
            for t, node, event, fields in events
        ]


def _fields(fields: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())
