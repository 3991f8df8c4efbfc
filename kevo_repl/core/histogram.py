"""Fixed-bucket histograms: recorded on the hot path, turned into Prometheus series at scrape.

A metrics library's histogram takes a lock and walks label maps on every observation; the
node's write and apply paths observe once per group commit and cannot afford to care. Here
an observation is one bisect over fixed bounds and two additions, with no lock: each
histogram has one writer at a time (the node loop, or the WAL's sync helper thread for
fdatasync durations). The scrape thread copies the counts list in one step (atomic under
the GIL), so the cumulative buckets it derives are always monotonic and end exactly at the
count; only the sum is read apart and may be one observation ahead or behind.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = ["ENTRY_BOUNDS", "SECONDS_BOUNDS", "Histogram", "HistogramSnapshot"]

# 100 us (a page-cache fdatasync) to 10 s (a disk in trouble): the latencies the node sees.
SECONDS_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Entries per group commit: powers of two up to the committer's cap of 65536.
ENTRY_BOUNDS: tuple[float, ...] = tuple(float(2**i) for i in range(17))

INF = float("inf")


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One consistent reading: ``buckets`` are ``(upper bound, cumulative count)``, the last
    one ``+inf`` and equal to ``count`` (Prometheus's ``le`` buckets)."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Histogram:
    """Counts of observations per fixed bucket, plus their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b <= a for a, b in pairwise(bounds)):
            raise ValueError(f"histogram bounds must be increasing, got {list(bounds)}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is >= it (``le`` is inclusive)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        counts = self.counts.copy()
        total = self.total
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, INF), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), running, total)
