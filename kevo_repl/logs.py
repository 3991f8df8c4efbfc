"""Structured logs: JSON lines for machines, readable lines on a terminal.

Each node binds ``node`` and ``role`` once; events carry ``lsn`` / ``replica_id`` where they
apply. Only notable events are logged (registered, bootstrap start/done, gap, disconnected,
recovered...), never one line per entry on the hot path.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in for a module until something reads one of its attributes; then the real
    module is imported (and is what later imports get)."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:  # the first read: import the real one
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


# structlog, as much of it as an idle node needs: its console renderer imports rich's
# pretty-printer and tracebacks when rich is installed (5.5 MiB of every node's RSS; ours
# prints exceptions as plain text), and its async loggers asyncio (6.6 MiB), which only their
# methods use. Later imports of rich (progress bars, `status --watch`) and asyncio work.
_FIRST = "structlog" not in sys.modules
_BLOCK_RICH = _FIRST and "rich" not in sys.modules
if _BLOCK_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails meanwhile
_DEFER_ASYNCIO = _FIRST and "asyncio" not in sys.modules
if _DEFER_ASYNCIO:
    sys.modules["asyncio"] = _Deferred("asyncio")
import structlog  # noqa: E402

if _BLOCK_RICH:
    del sys.modules["rich"]

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Set up structlog once per process.

    ``level`` defaults to ``$KEVO_LOG_LEVEL`` or info; ``fmt`` is ``json``, ``console`` or
    ``auto`` (console on a terminal, JSON otherwise; ``$KEVO_LOG_FORMAT`` overrides auto).
    """
    name = (level or os.environ.get("KEVO_LOG_LEVEL") or "info").lower()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(_LEVELS)}")
    fmt = (fmt or os.environ.get("KEVO_LOG_FORMAT") or "auto").lower()
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        raise ValueError(f"unknown log format {fmt!r}; use json, console or auto")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[name]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` fields (``node``, ``role``...)."""
    return structlog.get_logger().bind(**bound)
