"""Refused peer input, logged at most once a second per kind, with a count.

A node refuses garbage frames, forged positions and the like without stopping; logging each
one would let a flood of garbage flood the log too. So each kind of refusal is counted and
one line per kind per interval names the latest case and how many were refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RefusalLog"]


@dataclass(slots=True)
class RefusalLog:
    log: Any
    interval_ms: int = 1000
    _counts: dict[str, int] = field(default_factory=dict)
    _latest: dict[str, dict[str, object]] = field(default_factory=dict)
    _logged_ms: int = -(10**12)

    def refused(self, event: str, now_ms: int, **fields: object) -> None:
        self._counts[event] = self._counts.get(event, 0) + 1
        self._latest[event] = fields
        self.flush(now_ms)

    def flush(self, now_ms: int) -> None:
        """Log what was refused since the last line, if the interval has passed."""
        if not self._counts or now_ms - self._logged_ms < self.interval_ms:
            return
        for event, count in self._counts.items():
            self.log.warning(event, refused=count, **self._latest[event])
        self._counts.clear()
        self._latest.clear()
        self._logged_ms = now_ms
