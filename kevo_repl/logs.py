"""Structured logs: JSON lines for machines, readable lines on a terminal.

Each node binds ``node`` and ``role`` once; events carry ``lsn`` / ``replica_id`` where they
apply. Only notable events are logged (registered, bootstrap start/done, gap, disconnected,
recovered...), never one line per entry on the hot path.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

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
