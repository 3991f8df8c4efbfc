"""A replica's log lines about its upstream: the follower's events, and a silence once per
cause rather than once per retry (a missing primary would otherwise log four lines every
few seconds, forever)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kevo_repl.node.upstream_link import UpstreamLink

__all__ = ["UpstreamEvents"]

_WARNINGS = frozenset(
    {
        "disconnected",
        "storage_failed",
        "foreign_history",
        "request_refused",
        "primary_refused",
        "diverged",
    }
)
_SILENCE = re.compile(r"silent|timed out")  # a Reconnect because the upstream said nothing
_RETRY_EVENTS = frozenset({"disconnected", "request_timeout"})


def _is_retry(event: str, fields: dict[str, object]) -> bool:
    """One of the events each retry against a silent upstream repeats."""
    if event == "status":
        return fields.get("new") in ("CONNECTING", "DISCONNECTED")
    return event in _RETRY_EVENTS


class UpstreamEvents:
    def __init__(self, log: Any, link: UpstreamLink) -> None:
        self._log = log
        self._link = link
        self.unreachable = ""  # why the upstream does not answer, as logged ("" if it does)

    def reconnecting(self, reason: str, timeout_ms: int) -> None:
        if not _SILENCE.search(reason):
            self._log.info("reconnecting", reason=reason)
            return
        cause, detail = self._link.diagnose(timeout_ms)
        upstream = self._link.upstream
        if cause != self.unreachable:
            self._log.warning("upstream_unreachable", upstream=upstream, cause=cause, detail=detail)
        else:
            self._log.debug("upstream_retry", upstream=upstream, cause=cause)
        self.unreachable = cause

    def log(self, events: Iterable[tuple[str, dict[str, object]]]) -> None:
        log = self._log
        for event, fields in events:
            if self.unreachable and _is_retry(event, fields):
                continue  # the retries of a silence already logged
            if self.unreachable and event != "status":
                log.info("upstream_reachable", upstream=self._link.upstream, after=self.unreachable)
                self.unreachable = ""
            if event in _WARNINGS:
                log.warning(event, **fields)
            else:
                log.info("status_changed" if event == "status" else event, **fields)
