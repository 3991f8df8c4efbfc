"""``kevo-repl logs``: the local cluster's per-node JSON logs, merged in time order.

``kevo-repl cluster --data DIR`` writes each node's JSON log lines to ``DIR/logs/<node>.log``.
This module reads those files (and any others dropped there), merges them by timestamp and
filters them by node and level; with ``follow`` it keeps reading new lines as they are
written. Files are read incrementally (by offset, whole lines only), so following a busy
cluster costs one read per file per poll.

Lines of different files reach the disk at slightly different moments, so when following,
new lines are held for ``HOLD_S`` and released in timestamp order: lines written within that
window of each other come out in time order. A line that is not JSON (a crash's traceback)
is shown as it is, at level ``error``, with the time of the line before it in the same file.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["LEVELS", "LogFollower", "LogLine", "TextSink", "merged", "render_text", "run_logs"]

LEVELS = ("debug", "info", "warning", "error", "critical")
HOLD_S = 0.3
POLL_S = 0.1
_EPOCH = datetime.fromtimestamp(0, UTC)
_SHOWN_FIRST = ("timestamp", "level", "event", "node", "role")


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: datetime
    node: str  # the file's stem
    level: str
    record: dict[str, Any] | None  # None for a line that is not JSON
    raw: str


@dataclass(slots=True)
class _File:
    path: Path
    offset: int = 0
    partial: bytes = b""
    last_ts: datetime = _EPOCH


def _parse(node: str, text: str, f: _File) -> LogLine:
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return LogLine(f.last_ts, node, "error", None, text)
    try:
        ts = datetime.fromisoformat(str(record.get("timestamp", "")))
    except ValueError:
        ts = f.last_ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    f.last_ts = ts
    level = str(record.get("level", "info")).lower()
    return LogLine(ts, node, level, record, text)


@dataclass(slots=True)
class LogFollower:
    """Reads new whole lines from every ``*.log`` file in ``log_dir``."""

    log_dir: Path
    nodes: frozenset[str] = frozenset()  # empty: every node
    min_level: str = "debug"
    start_at_end: bool = False  # skip what the files already hold
    _files: dict[str, _File] = field(default_factory=dict)

    def wanted(self, line: LogLine) -> bool:
        rank = LEVELS.index(line.level) if line.level in LEVELS else len(LEVELS)
        return rank >= LEVELS.index(self.min_level)

    def poll(self) -> list[LogLine]:
        """New lines since the last call, filtered, in each file's order."""
        out: list[LogLine] = []
        for path in sorted(self.log_dir.glob("*.log")):
            node = path.stem
            if self.nodes and node not in self.nodes:
                continue
            f = self._files.get(node)
            if f is None:
                f = self._files[node] = _File(path)
                if self.start_at_end:
                    f.offset = _size(path)
            out.extend(line for line in self._read(node, f) if self.wanted(line))
        return out

    def _read(self, node: str, f: _File) -> list[LogLine]:
        size = _size(f.path)
        if size < f.offset:  # truncated or replaced: start over
            f.offset, f.partial = 0, b""
        if size == f.offset:
            return []
        with f.path.open("rb") as fh:
            fh.seek(f.offset)
            data = fh.read(size - f.offset)
        f.offset += len(data)
        data = f.partial + data
        *complete, f.partial = data.split(b"\n")
        texts = (raw.decode("utf-8", "replace").rstrip("\r") for raw in complete)
        return [_parse(node, text, f) for text in texts if text.strip()]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def merged(lines: Iterable[LogLine]) -> list[LogLine]:
    """Sorted by time; lines of one file keep their order (the sort is stable)."""
    return sorted(lines, key=lambda line: line.ts)


def render_text(line: LogLine, *, prefix: bool = True) -> str:
    """``[node] HH:MM:SS.mmm level event key=value ...`` for people."""
    head = f"[{line.node}] " if prefix else ""
    if line.record is None:
        return f"{head}{line.raw}"
    r = line.record
    clock = line.ts.astimezone().strftime("%H:%M:%S.%f")[:-3]
    rest = " ".join(
        f"{k}={v if isinstance(v, str) and v and ' ' not in v else json.dumps(v)}"
        for k, v in r.items()
        if k not in _SHOWN_FIRST
    )
    return f"{head}{clock} {line.level:<7} {r.get('event', '')} {rest}".rstrip()


def run_logs(
    follower: LogFollower,
    out: TextSink,
    *,
    follow: bool,
    fmt: str = "text",
    last: int = 0,
    stop: threading.Event | None = None,
) -> int:
    """Print the backlog (its ``last`` lines if > 0), then new lines until ``stop`` is set."""
    emit = _emitter(out, fmt)
    backlog = merged(follower.poll())
    for line in backlog[-last:] if last > 0 else backlog:
        emit(line)
    out.flush()
    if not follow:
        return 0
    stop = stop or threading.Event()
    held: list[tuple[datetime, int, float, LogLine]] = []
    seq = itertools.count()
    done = False
    while not done:
        done = stop.wait(POLL_S)  # one last read after stop: nothing written is lost
        now = time.monotonic()
        for line in follower.poll():
            heapq.heappush(held, (line.ts, next(seq), now, line))
        released = False
        while held and (done or held[0][2] <= now - HOLD_S):
            emit(heapq.heappop(held)[3])
            released = True
        if released:
            out.flush()
    return 0


def _emitter(out: TextSink, fmt: str) -> Callable[[LogLine], None]:
    if fmt == "json":

        def emit_json(line: LogLine) -> None:
            doc = line.record if line.record is not None else {"node": line.node, "raw": line.raw}
            out.write(json.dumps({"node": line.node, **doc}) + "\n")

        return emit_json

    def emit_text(line: LogLine) -> None:
        out.write(render_text(line) + "\n")

    return emit_text
