"""Clocks: the only place node code reads time, so the core stays pure and testable."""

from __future__ import annotations

import time

__all__ = ["monotonic_ms", "monotonic_s", "wall_us"]


def monotonic_ms() -> int:
    """Milliseconds from a monotonic clock: timers, lag, liveness."""
    return time.monotonic_ns() // 1_000_000


def monotonic_s() -> float:
    """Seconds from the same monotonic clock, to the nanosecond: durations for histograms,
    where an fdatasync or an apply is often well under a millisecond."""
    return time.monotonic_ns() / 1e9


def wall_us() -> int:
    """Wall-clock microseconds: commit timestamps shown to people, never compared across nodes."""
    return time.time_ns() // 1_000
