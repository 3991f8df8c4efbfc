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
have been committed), and nothing after the last of them was sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from kevo_repl.adapters.security import ClientCurve
from kevo_repl.client import (
    Client,
    NodeUnreachableError,
    PipelineTimeoutError,
    RemoteError,
    batch_request,
)
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb
from kevo_repl.wire.batch import DEFAULT_LIMITS

__all__ = [
    "LoadError",
    "LoadResult",
    "LoadUnreachableError",
    "Progress",
    "load_lines",
    "parse_line",
]

WINDOW = 16  # batches in flight
_MAX_BATCH_BYTES = 4 * 1024 * 1024  # well under the 16 MiB request limit


class LoadError(KevoError):
    """A line or a batch could not be loaded; says what was committed before it."""


class LoadUnreachableError(LoadError, NodeUnreachableError):
    """The primary fell silent mid-load; says what was committed and what is unknown."""


@dataclass(slots=True)
class LoadResult:
    entries: int = 0
    batches: int = 0
    last_lsn: int = 0
    committed_through_line: int = 0


@dataclass(slots=True)
class _Batch:
    first_line: int
    last_line: int
    entries: list[tuple[bytes, bytes | None]]
    read_bytes: int  # input bytes consumed through this batch


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


def _batches(stream: BinaryIO, size: int) -> Iterator[_Batch]:
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
            yield _Batch(first, lineno, entries, consumed)
            entries, nbytes, first = [], 0, 0
    if entries:
        yield _Batch(first, lineno, entries, consumed)


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, out: TextIO, total_bytes: int | None) -> None:
        self.out = out
        self.total = total_bytes
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, entries: int, read_bytes: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._drawn < 0.1:
            return
        self._drawn = now
        rate = entries / max(now - self.started, 1e-6)
        text = f"{entries} entries  {rate:,.0f}/s"
        if self.total:
            frac = min(1.0, read_bytes / self.total)
            filled = int(frac * 30)
            text = f"[{'#' * filled}{'.' * (30 - filled)}] {frac:6.1%}  {text}"
        self.out.write("\r" + text + ("\n" if final else ""))
        self.out.flush()


def load_lines(
    node: str,
    stream: BinaryIO,
    *,
    batch: int = 1000,
    timeout_ms: int = 5000,
    progress: Progress | None = None,
    curve: ClientCurve | None = None,
) -> LoadResult:
    """Load every line of ``stream`` through ``node`` (or its primary); see the module doc."""
    with Client(node, timeout_ms=timeout_ms, curve=curve) as first:
        target = first.primary_address()
        c = first.to(target)  # with the primary's key, not the one given for ``node``
    result = LoadResult()
    with c:
        pending: list[_Batch] = []
        batches = _batches(stream, batch)
        while True:
            try:
                item = next(batches, None)
            except _BadLine as bad:
                _send(c, pending, result, progress)
                raise LoadError(_bad_line_message(bad, result)) from None
            if item is not None:
                pending.append(item)
            if pending and (item is None or len(pending) >= WINDOW):
                _send(c, pending, result, progress)
                pending = []
            if item is None:
                break
    if progress is not None:
        progress.update(result.entries, progress.total or 0, final=True)
    return result


def _send(c: Client, pending: list[_Batch], result: LoadResult, progress: Progress | None) -> None:
    """Send one window; count what committed in order, raise ``LoadError`` on anything else."""
    if not pending:
        return
    timeout: PipelineTimeoutError | None = None
    answers: list[pb.Response | None]
    try:
        answers = list(c.call_many([batch_request(b.entries) for b in pending], window=WINDOW))
    except PipelineTimeoutError as exc:
        answers, timeout = exc.responses, exc
    refused: list[str] = []
    unknown: list[int] = []  # indexes into pending: sent, no answer
    late: list[int] = []  # committed, after a batch that was not
    late_lsn = 0
    for i, (b, resp) in enumerate(zip(pending, answers, strict=False)):
        body = resp.WhichOneof("body") if resp is not None else None
        if resp is not None and body == "write":
            if refused or unknown:
                late.append(i)
                late_lsn = max(late_lsn, resp.write.lsn)
                continue
            result.entries += len(b.entries)
            result.batches += 1
            result.last_lsn = max(result.last_lsn, resp.write.lsn)
            result.committed_through_line = b.last_line
            if progress is not None:
                progress.update(result.entries, b.read_bytes)
        elif resp is None:
            unknown.append(i)
        else:
            err = resp.error if body == "error" else pb.Error()
            why = str(RemoteError(err.code, err.message))
            refused.append(f"lines {b.first_line}-{b.last_line} were refused ({why})")
    if not (refused or unknown):
        return
    parts = [*refused, _committed(result)]
    if late:
        n = sum(len(pending[i].entries) for i in late)
        parts.append(
            f"{_lines(pending, late)} were committed too ({n} entries, up to LSN {late_lsn})"
        )
    if unknown:
        parts.append(
            f"{_lines(pending, unknown)} have an unknown outcome "
            "(sent, no answer: they may or may not have been committed)"
        )
    parts.append(f"nothing after line {pending[len(answers) - 1].last_line} was sent")
    if timeout is not None:
        raise LoadUnreachableError(f"{timeout}; " + "; ".join(parts))
    raise LoadError("; ".join(parts))


def _lines(pending: list[_Batch], indexes: list[int]) -> str:
    """``lines 5-9, 20-24``: the batches at ``indexes``, neighbours in ``pending`` merged."""
    spans: list[list[int]] = []  # [first index, last index]
    for i in indexes:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return "lines " + ", ".join(f"{pending[a].first_line}-{pending[b].last_line}" for a, b in spans)


def _committed(result: LoadResult) -> str:
    if not result.entries:
        return "nothing was committed"
    return (
        f"lines 1-{result.committed_through_line} were committed "
        f"({result.entries} entries, up to LSN {result.last_lsn})"
    )


def _bad_line_message(bad: _BadLine, result: LoadResult) -> str:
    return (
        f"line {bad.lineno}: {bad.reason}; {_committed(result)}; "
        f"nothing from line {bad.first_unsent} on was sent"
    )
