"""One window of ``load`` batches to the primary: what committed, and resending the rest.

A window's batches are pipelined (``Client.call_many``) and counted as committed in order,
up to the first one without a confirmed answer. Without ``retry_s`` anything else stops the
load with a message that names every line's fate, the last committed LSN and the first line
not committed. With ``retry_s`` a silent primary (a timeout: it died, froze, or refuses
connections) or one that answers "not now" (shutting down, its WAL failed under the write,
no longer the primary) is polled for up to ``retry_s`` seconds, and once it answers the
window is resent from its first unconfirmed batch, each request unchanged: the same client
id and seq, marked as a retry. Batches that did commit are answered from the primary's
retry window with their original LSNs; nothing is written twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kevo_repl.adapters.connect_watch import UnresolvableHostError
from kevo_repl.client import (
    Client,
    NodeUnreachableError,
    PipelineTimeoutError,
    RemoteError,
    mark_retry,
)
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb

__all__ = [
    "WINDOW",
    "Batch",
    "LoadError",
    "LoadResult",
    "LoadUnreachableError",
    "WindowSender",
    "committed_text",
]

WINDOW: Final = 16  # batches in flight
# Answers that wrote nothing for sure (or whose outcome a retry settles): worth a resend.
_RETRYABLE: Final = frozenset(
    {pb.ERROR_UNAVAILABLE, pb.ERROR_OUTCOME_UNKNOWN, pb.ERROR_NOT_PRIMARY}
)
_PROBE_MS: Final = 1000  # one status poll of a node that is coming back
_MAX_DELAY_S: Final = 1.0


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
    resent: int = 0  # batches sent again after an outage (answered, never written, twice)


@dataclass(slots=True)
class Batch:
    first_line: int
    last_line: int
    entries: list[tuple[bytes, bytes | None]]
    read_bytes: int  # input bytes consumed through this batch


class WindowSender:
    """Sends windows through one client (switched to a new primary if one is named)."""

    def __init__(
        self,
        client: Client,
        result: LoadResult,
        *,
        retry_s: float = 0.0,
        on_progress: Callable[[int, int], None] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.result = result
        self.retry_s = retry_s
        self.on_progress = on_progress
        self.notice = notice

    def close(self) -> None:
        self.client.close()

    def send(self, pending: list[Batch]) -> None:
        """Commit ``pending`` in order, or raise ``LoadError`` saying what committed."""
        if not pending:
            return
        reqs = [self.client.batch_request(b.entries) for b in pending]
        start = 0  # the first batch without a confirmed answer
        outage: float | None = None  # when the current outage began
        delay = 0.05
        while True:
            timeout: PipelineTimeoutError | None = None
            answers: list[pb.Response | None]
            try:
                answers = list(self.client.call_many(reqs[start:], window=WINDOW))
            except PipelineTimeoutError as exc:
                answers, timeout = exc.responses, exc
            confirmed = self._count(pending[start:], answers)
            if confirmed:
                outage, delay = None, 0.05
            if start + confirmed == len(pending):
                return
            stuck = answers[confirmed] if confirmed < len(answers) else None
            if not self.retry_s or not _retryable(stuck):
                raise self._failure(pending[start:], answers, confirmed, timeout, "")
            for r in reqs[start + confirmed : start + len(answers)]:
                mark_retry(r)  # sent once: from now on a resend, checked as such
            start += confirmed
            if outage is None:
                outage = time.monotonic()
                if self.notice is not None:
                    self.notice(
                        f"{_why(timeout, stuck)}; retrying for up to {self.retry_s:g} s, from line "
                        f"{pending[start].first_line} (batches that did commit are answered, "
                        "not written again)"
                    )
            self._follow(stuck)
            if not self._wait_back(outage + self.retry_s, delay):
                gave_up = f"gave up after {self.retry_s:g} s of retrying: "
                raise self._failure(pending[start:], answers[confirmed:], 0, timeout, gave_up)
            delay = min(2 * delay, _MAX_DELAY_S)
            self.result.resent += len(pending) - start

    def _count(self, batches: list[Batch], answers: list[pb.Response | None]) -> int:
        """Count the confirmed prefix into the result; its length."""
        result = self.result
        n = 0
        for b, resp in zip(batches, answers, strict=False):
            if resp is None or resp.WhichOneof("body") != "write":
                break
            result.entries += len(b.entries)
            result.batches += 1
            result.last_lsn = max(result.last_lsn, resp.write.lsn)
            result.committed_through_line = b.last_line
            if self.on_progress is not None:
                self.on_progress(result.entries, b.read_bytes)
            n += 1
        return n

    def _follow(self, stuck: pb.Response | None) -> None:
        """An answer naming another primary: send there from now on."""
        if stuck is not None and stuck.WhichOneof("body") == "error":
            where = stuck.error.primary
            if stuck.error.code == pb.ERROR_NOT_PRIMARY and where and where != self.client.node:
                self._switch(where)

    def _switch(self, node: str) -> None:
        old, self.client = self.client, self.client.to(node)
        old.close()

    def _wait_back(self, deadline: float, delay: float) -> bool:
        """Poll until a primary answers (True) or ``deadline`` passes (False); a node that
        now names another primary (a failover) is followed there."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, _MAX_DELAY_S)
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            try:
                with self.client.to(self.client.node) as probe:
                    probe.timeout_ms = min(_PROBE_MS, left_ms)
                    s = probe.status_message()
            except (NodeUnreachableError, UnresolvableHostError, RemoteError):
                continue
            if s.role == pb.ROLE_PRIMARY and not s.fenced:
                return True
            if s.primary and s.primary != self.client.node:
                self._switch(s.primary)

    def _failure(
        self,
        batches: list[Batch],
        answers: list[pb.Response | None],
        confirmed: int,
        timeout: PipelineTimeoutError | None,
        lead: str,
    ) -> LoadError:
        """What is known after ``confirmed`` batches committed in order: refused, committed
        after a gap, unknown (sent, no answer), never sent; and where to resume."""
        refused: list[str] = []
        unknown: list[int] = []  # indexes into batches: sent, no answer
        late: list[int] = []  # committed, after a batch that was not
        late_lsn = 0
        for i in range(confirmed, len(answers)):
            b, resp = batches[i], answers[i]
            body = resp.WhichOneof("body") if resp is not None else None
            if resp is not None and body == "write":
                late.append(i)
                late_lsn = max(late_lsn, resp.write.lsn)
            elif resp is None:
                unknown.append(i)
            else:
                err = resp.error if body == "error" else pb.Error()
                why = str(RemoteError(err.code, err.message))
                refused.append(f"lines {b.first_line}-{b.last_line} were refused ({why})")
        result = self.result
        parts = [*refused, committed_text(result)]
        if late:
            n = sum(len(batches[i].entries) for i in late)
            parts.append(
                f"{_lines(batches, late)} were committed too ({n} entries, up to LSN {late_lsn})"
            )
        if unknown:
            parts.append(
                f"{_lines(batches, unknown)} have an unknown outcome "
                "(sent, no answer: they may or may not have been committed)"
            )
        if answers:
            parts.append(f"nothing after line {batches[len(answers) - 1].last_line} was sent")
        else:
            parts.append(f"nothing from line {batches[0].first_line} on was sent again")
        resume = batches[confirmed].first_line
        last = f"last committed LSN {result.last_lsn}" if result.last_lsn else "no LSN committed"
        parts += [last, f"first line not committed: {resume}"]
        text = "; ".join(parts)
        if timeout is not None:
            hint = (
                ""
                if self.retry_s
                else " (load from there, or with --retry-s S to wait for the primary and resume)"
            )
            return LoadUnreachableError(f"{lead}{timeout}; {text}{hint}")
        return LoadError(f"{lead}{text}")


def _why(timeout: PipelineTimeoutError | None, stuck: pb.Response | None) -> str:
    if timeout is not None or stuck is None or stuck.WhichOneof("body") != "error":
        return str(timeout or "no answer")
    return str(RemoteError(stuck.error.code, stuck.error.message))


def _retryable(stuck: pb.Response | None) -> bool:
    """Silence, or an answer that wrote nothing for sure (or whose outcome a retry settles)."""
    if stuck is None:
        return True
    return stuck.WhichOneof("body") == "error" and stuck.error.code in _RETRYABLE


def _lines(batches: list[Batch], indexes: list[int]) -> str:
    """``lines 5-9, 20-24``: the batches at ``indexes``, neighbours merged."""
    spans: list[list[int]] = []  # [first index, last index]
    for i in indexes:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return "lines " + ", ".join(f"{batches[a].first_line}-{batches[b].last_line}" for a, b in spans)


def committed_text(result: LoadResult) -> str:
    if not result.entries:
        return "nothing was committed"
    return (
        f"lines 1-{result.committed_through_line} were committed "
        f"({result.entries} entries, up to LSN {result.last_lsn})"
    )
