"""Clocks: the only place node code reads time, so the core stays pure and testable."""

from __future__ import annotations

import time

__all__ = ["monotonic_ms", "wall_us"]


def monotonic_ms() -> int:
    """Milliseconds from a monotonic clock: timers, lag, liveness."""
    return time.monotonic_ns() // 1_000_000


def wall_us() -> int:
    """Wall-clock microseconds: commit timestamps shown to people, never compared across nodes."""
    return time.time_ns() // 1_000
