"""Progress bars on stderr for the commands that move a lot of data (load, backup).

Drawn with ``rich`` (imported here only, and only when a bar is made, so a node never loads
it); callers make a bar only when stderr is a terminal, so pipes and logs get no control
characters. rich redraws on its own thread at most ``refresh_per_second`` times, so an
``update`` per batch or per chunk costs a few attribute writes.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """One bar: ``total`` units (None: unknown, a spinner and the count), and a text field."""

    def __init__(self, label: str, total: float | None, out: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        file = out or sys.stderr
        columns: list[Any] = [TextColumn("{task.description}")]
        columns += [BarColumn(), TaskProgressColumn()] if total else [SpinnerColumn()]
        columns += [TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
        self._progress = Progress(
            *columns,
            console=Console(file=file, width=None if file.isatty() else 160),
            refresh_per_second=10,
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total, detail="")
        self._progress.start()

    def update(self, completed: float, detail: str = "") -> None:
        self._progress.update(self._task, completed=completed, detail=detail)

    def close(self) -> None:
        """Draw the last state and leave the line on the terminal (once)."""
        if self._progress.live.is_started:
            self._progress.refresh()
            self._progress.stop()
