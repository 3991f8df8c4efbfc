"""What a node measures for ``--metrics-port`` beyond its positions: the write and apply paths'
histograms, and requests and errors by kind and code.

Everything here is plain ints and ``Histogram``s, written on the node's own threads and read
by the scrape (``kevo_repl/metrics.py``), so the hot path holds no metric objects. The label
values are fixed when the node starts, from the protocol's enums (the ``Request`` body's
cases, ``ErrorCode``): nothing a peer sends can add a series.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.adapters.clock import monotonic_ms, monotonic_s
from kevo_repl.core.histogram import ENTRY_BOUNDS, SECONDS_BOUNDS, Histogram
from kevo_repl.core.throughput import RateWindow
from kevo_repl.wire import pb

__all__ = ["ERROR_NAMES", "INVALID_KIND", "REQUEST_KINDS", "DrainTimes", "NodeStats"]

REQUEST_KINDS: tuple[str, ...] = tuple(
    f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name["body"].fields
)
INVALID_KIND = "invalid"  # a frame that decoded to no known request
ERROR_NAMES: dict[int, str] = {
    int(value): name.removeprefix("ERROR_").lower() for name, value in pb.ErrorCode.items()
}


def _seconds() -> Histogram:
    return Histogram(SECONDS_BOUNDS)


@dataclass(slots=True)
class NodeStats:
    """Kept by the ``Node`` (not its source), so a promotion or a repoint keeps the series."""

    commit_seconds: Histogram = field(default_factory=_seconds)  # start of a group to published
    fsync_seconds: Histogram = field(default_factory=_seconds)  # one WAL fdatasync
    group_entries: Histogram = field(default_factory=lambda: Histogram(ENTRY_BOUNDS))
    apply_seconds: Histogram = field(default_factory=_seconds)  # one store transaction set
    requests: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*REQUEST_KINDS, INVALID_KIND), 0)
    )
    errors: dict[int, int] = field(default_factory=lambda: dict.fromkeys(ERROR_NAMES, 0))
    # Entries and bytes published over the last 10 s (Status), from the published counters.
    published: RateWindow = field(default_factory=lambda: RateWindow.starting(monotonic_ms(), 0, 0))

    def error(self, code: int) -> None:
        """An error response sent; a code outside the enum counts as ``unspecified``."""
        errors = self.errors
        errors[code if code in errors else pb.ERROR_UNSPECIFIED] += 1

    def timed_sync(self, sync: Callable[[], int]) -> Callable[[], int]:
        """``sync`` (a WAL's) that records its duration: submitted to the sync helper thread,
        the only writer of ``fsync_seconds``. A failed sync is not recorded: the node stops."""

        def run() -> int:
            start = monotonic_s()
            durable = sync()
            self.fsync_seconds.observe(monotonic_s() - start)
            return durable

        return run


class DrainTimes:
    """A replica's group commits: each drain of its upstream's records is appended, applied
    and published in one go (a later fdatasync makes it durable); timed from its append to
    its publishing, as a primary's group is from being taken to published."""

    __slots__ = ("_pending", "_stats")

    def __init__(self, stats: NodeStats) -> None:
        self._stats = stats
        self._pending: deque[tuple[int, int, float]] = deque()  # (last LSN, entries, started)

    def applied(self, last_lsn: int, entries: int, started_s: float, applying_s: float) -> None:
        """A drain appended from ``started_s`` and applied to the store from ``applying_s``."""
        self._stats.apply_seconds.observe(monotonic_s() - applying_s)
        self._pending.append((last_lsn, entries, started_s))

    def published(self, durable_lsn: int) -> None:
        stats, pending = self._stats, self._pending
        now = monotonic_s()
        while pending and pending[0][0] <= durable_lsn:
            _last, entries, started = pending.popleft()
            stats.commit_seconds.observe(now - started)
            stats.group_entries.observe(entries)

    def clear(self) -> None:
        """The WAL was started afresh (a bootstrap, a rewind): nothing pending is published."""
        self._pending.clear()
