"""Entries/s and bytes/s over the last few seconds, from running totals.

Fed with cumulative totals (a node's published counters, a follower's applied LSN and the
record bytes up to it), it keeps one sample per ``step_ms`` (the totals as of that moment)
for ``window_ms``, so its memory is bounded (about window/step samples) and the hot path
pays one comparison per call. The rate is what the totals grew by since the window's start,
over the window (or over the time since the first sample, while that is shorter): a burst
that fits in one step counts in full, and a follower that stops advancing reads 0 once its
last progress has left the window, instead of showing its last speed forever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateWindow"]


@dataclass(slots=True)
class RateWindow:
    window_ms: int = 10_000
    step_ms: int = 1_000
    _samples: deque[tuple[int, int, int]] = field(default_factory=deque)  # (ms, entries, bytes)

    @classmethod
    def starting(cls, now_ms: int, entries: int, nbytes: int) -> RateWindow:
        """A window whose baseline is these totals at ``now_ms``."""
        window = cls()
        window._samples.append((now_ms, entries, nbytes))
        return window

    def note(self, now_ms: int, entries: int, nbytes: int) -> None:
        """Record the totals as of ``now_ms`` (kept when a step has passed since the last)."""
        samples = self._samples
        if not samples or now_ms - samples[-1][0] >= self.step_ms:
            samples.append((now_ms, entries, nbytes))
            while len(samples) > 2 and samples[1][0] <= now_ms - self.window_ms:
                samples.popleft()  # samples[0] stays the latest one at or before the start

    def rates(self, now_ms: int, entries: int, nbytes: int) -> tuple[float, float]:
        """``(entries/s, bytes/s)`` from the window's start (or the first sample) to these
        totals."""
        samples = list(self._samples)  # a copy: the metrics thread reads while the loop notes
        if not samples:
            return 0.0, 0.0
        start = now_ms - self.window_ms
        base = samples[0]
        for sample in samples:
            if sample[0] > start:
                break
            base = sample
        span = min(self.window_ms, now_ms - samples[0][0])
        if span <= 0:
            return 0.0, 0.0
        return max(0, entries - base[1]) * 1000.0 / span, max(0, nbytes - base[2]) * 1000.0 / span
