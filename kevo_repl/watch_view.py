"""``status --watch``, for one node or a whole etcd group: refresh until Ctrl-C.

On a terminal one live view is redrawn in place (rich); to a pipe or a log, one block per
refresh. A read that fails with ``UnreachableError`` (the node, or etcd) is noted and
retried; the last good view stays on screen meanwhile.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kevo_repl.core.errors import UnreachableError

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["stamp", "watch_live", "watch_printed"]

T = TypeVar("T")


def stamp(interval_s: float) -> str:
    return f"{time.strftime('%H:%M:%S')}  (every {interval_s:g}s, Ctrl-C stops)"


def watch_printed(read: Callable[[], T], show: Callable[[T], None], interval_s: float) -> None:
    """Print ``show(read())`` every ``interval_s`` until Ctrl-C."""
    try:
        while True:
            time.sleep(interval_s)
            try:
                show(read())
            except UnreachableError as exc:
                print(f"kevo-repl: {exc} (retrying)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return


def watch_live(
    read: Callable[[], T], first: T, render: Callable[[T], RenderableType], interval_s: float
) -> None:
    """Redraw ``render(read())`` in place every ``interval_s`` until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def view(got: T, note: str = "") -> Group:
        return Group(Text(stamp(interval_s) + note, style="dim"), render(got))

    last = first
    try:
        with Live(view(first), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval_s)
                try:
                    last = read()
                    live.update(view(last), refresh=True)
                except UnreachableError as exc:
                    live.update(view(last, f"  {exc} (retrying)"), refresh=True)
    except KeyboardInterrupt:
        return
