"""``kevo-repl load``: ``key<TAB>value`` lines into the primary, in pipelined batches.

Input is read as bytes (keys and values need not be UTF-8), one entry per line, split at the
first TAB (so a value may hold TABs); a trailing ``\\r`` is dropped and blank lines are
skipped. Lines are grouped into atomic batches of ``--batch`` entries (smaller when the bytes
would exceed a request), and ``WINDOW`` batches at a time are pipelined with
``Client.call_many``.

A bad line (no TAB, empty key, key or value over the limits) stops the load before its batch
is sent: every batch before it is committed, nothing from the first line of its batch on is
sent, and the error says both line numbers and the last committed LSN, so the operator can
fix the line and resume from the right place. Nothing is half-sent silently. A batch the
primary refuses is reported the same way. Writes sent to a replica go to its primary.

If the primary falls silent mid-window (``--request-timeout-ms``), the load stops with
``LoadUnreachableError`` (exit 3): every batch whose answer arrived counts as committed, the
batches sent without an answer are named as having an unknown outcome (they may or may not
have been committed), nothing after the last of them was sent, and the message ends with the
last committed LSN and the first line not committed. With ``retry_s`` (``--retry-s S``) the
load waits instead, up to S seconds, for the primary to answer again, and resends from the
first batch without a confirmed answer with the same (client id, seq): batches that did
commit are answered from the primary's retry window, so nothing is written twice
(``load_send``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TextIO

from kevo_repl.adapters.security import ClientCurve
from kevo_repl.client import Client
from kevo_repl.load_send import (
    WINDOW,
    Batch,
    LoadError,
    LoadResult,
    LoadUnreachableError,
    WindowSender,
    committed_text,
)
from kevo_repl.wire.batch import DEFAULT_LIMITS

__all__ = [
    "WINDOW",
    "LoadError",
    "LoadResult",
    "LoadUnreachableError",
    "Progress",
    "load_lines",
    "parse_line",
]

_MAX_BATCH_BYTES = 4 * 1024 * 1024  # well under the 16 MiB request limit


class _BadLine(Exception):
    """Line ``lineno`` is bad; its batch (not sent) began at ``first_unsent``."""

    def __init__(self, lineno: int, reason: str, first_unsent: int) -> None:
        super().__init__(reason)
        self.lineno = lineno
        self.reason = reason
        self.first_unsent = first_unsent


def parse_line(raw: bytes) -> tuple[bytes, bytes] | None:
    """``(key, value)``, or None for a blank line; ``ValueError`` says what is wrong."""
    line = raw.removesuffix(b"\n").removesuffix(b"\r")
    if not line:
        return None
    key, tab, value = line.partition(b"\t")
    if not tab:
        raise ValueError("no TAB between key and value")
    if not key:
        raise ValueError("empty key")
    if len(key) > DEFAULT_LIMITS.max_key_bytes:
        raise ValueError(f"key of {len(key)} bytes (limit {DEFAULT_LIMITS.max_key_bytes})")
    if len(value) > DEFAULT_LIMITS.max_value_bytes:
        raise ValueError(f"value of {len(value)} bytes (limit {DEFAULT_LIMITS.max_value_bytes})")
    return key, value


def _batches(stream: BinaryIO, size: int) -> Iterator[Batch]:
    entries: list[tuple[bytes, bytes | None]] = []
    first = 0
    nbytes = 0
    consumed = 0
    lineno = 0
    for lineno, raw in enumerate(stream, start=1):
        consumed += len(raw)
        try:
            kv = parse_line(raw)
        except ValueError as exc:
            raise _BadLine(lineno, str(exc), first or lineno) from None
        if kv is None:
            continue
        if not entries:
            first = lineno
        entries.append(kv)
        nbytes += len(kv[0]) + len(kv[1]) + 8
        if len(entries) >= size or nbytes >= _MAX_BATCH_BYTES:
            yield Batch(first, lineno, entries, consumed)
            entries, nbytes, first = [], 0, 0
    if entries:
        yield Batch(first, lineno, entries, consumed)


class Progress:
    """The load's bar (``ProgressBar``, rich): bytes of the input read, entries and rate."""

    def __init__(self, out: TextIO, total_bytes: int | None) -> None:
        from kevo_repl.progress import ProgressBar

        self.total = total_bytes
        self.started = time.monotonic()
        self._bar = ProgressBar("load", float(total_bytes) if total_bytes else None, out)

    def update(self, entries: int, read_bytes: int) -> None:
        rate = entries / max(time.monotonic() - self.started, 1e-6)
        self._bar.update(read_bytes if self.total else entries, f"{entries} entries  {rate:,.0f}/s")

    def close(self) -> None:
        self._bar.close()


def load_lines(
    node: str,
    stream: BinaryIO,
    *,
    batch: int = 1000,
    timeout_ms: int = 5000,
    progress: Progress | None = None,
    curve: ClientCurve | None = None,
    retry_s: float = 0.0,
    notice: Callable[[str], None] | None = None,
) -> LoadResult:
    """Load every line of ``stream`` through ``node`` (or its primary); see the module doc.

    ``retry_s``: how long to wait for a primary that stops answering before giving up;
    ``notice`` is told (once per outage) that the load is waiting.
    """
    with Client(node, timeout_ms=timeout_ms, curve=curve) as first:
        target = first.primary_address()
        c = first.to(target)  # with the primary's key, not the one given for ``node``
    result = LoadResult()
    on_progress = progress.update if progress is not None else None
    sender = WindowSender(c, result, retry_s=retry_s, on_progress=on_progress, notice=notice)
    try:
        pending: list[Batch] = []
        batches = _batches(stream, batch)
        while True:
            try:
                item = next(batches, None)
            except _BadLine as bad:
                sender.send(pending)
                raise LoadError(_bad_line_message(bad, result)) from None
            if item is not None:
                pending.append(item)
            if pending and (item is None or len(pending) >= WINDOW):
                sender.send(pending)
                pending = []
            if item is None:
                break
    finally:
        sender.close()
    if progress is not None:
        progress.update(result.entries, progress.total or 0)
    return result


def _bad_line_message(bad: _BadLine, result: LoadResult) -> str:
    return (
        f"line {bad.lineno}: {bad.reason}; {committed_text(result)}; "
        f"nothing from line {bad.first_unsent} on was sent"
    )
