"""Where a tail begins: ``--from-lsn N``, ``--from-lsn -N``, ``--from-time T``, or new entries.

kcat's offsets for a WAL. A positive LSN is taken as given: the user named it, so a WAL that
no longer holds it is an error. The relative starts (the last N entries, a time) are wishes
about what the WAL retains: one that reaches below its first LSN starts there, with a note,
not an error. The time is looked up on the node (``LsnAtTime``, a search of its WAL by
commit time), never by streaming the WAL here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kevo_repl.client import Client, RemoteError
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb

__all__ = ["TIME_FORMAT", "Begin", "TailStart", "format_time_us", "parse_time", "resolve_start"]

TIME_FORMAT = "ISO 8601, e.g. 2026-12-02T10:00:00Z or 2026-12-02T11:00:00+01:00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """Microseconds since the epoch of an ISO 8601 time; one without an offset is UTC.

    ``ValueError`` naming the expected format otherwise.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a time in {TIME_FORMAT}; got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1)


def format_time_us(time_us: int) -> str:
    """A commit time for people: UTC, milliseconds, ``Z``."""
    when = _EPOCH + timedelta(microseconds=time_us)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TailStart:
    """What the user asked for; all fields empty means new entries only."""

    lsn: int | None = None  # --from-lsn N (N >= 1)
    last: int | None = None  # --from-lsn -N: the last N entries
    time_us: int | None = None  # --from-time: the first entry committed at or after it
    time_text: str = ""  # --from-time as written, for notes

    @property
    def relative(self) -> bool:
        """A start that may move up to the first retained LSN instead of failing."""
        return self.last is not None or self.time_us is not None


@dataclass(frozen=True, slots=True)
class Begin:
    """The LSN a tail starts at, what it came from (for errors), a note for stderr if any."""

    lsn: int
    why: str
    note: str = ""


def resolve_start(
    start: TailStart, last_lsn: int, source: Client, retained_from: Callable[[], int]
) -> Begin:
    """The first LSN to show. ``last_lsn``: the tailed node's last (a replica's applied);
    ``source`` serves its history (WalSync) and ``retained_from`` its WAL's first LSN."""
    if start.lsn is not None:
        return Begin(start.lsn, f"--from-lsn {start.lsn}")
    if start.last is not None:
        return _last_entries(start.last, last_lsn, retained_from(), source.node)
    if start.time_us is not None:
        return _at_time(start.time_us, start.time_text, source)
    return Begin(last_lsn + 1, f"the first entry after LSN {last_lsn}, the last now")


def _last_entries(count: int, last_lsn: int, floor: int, where: str) -> Begin:
    what = f"--from-lsn -{count}"
    want = last_lsn - count + 1
    if want >= floor:
        return Begin(want, f"{what}, the last {count} entries")
    if floor > last_lsn:
        note = f"{what}: {where} retains no entries (its WAL starts at LSN {floor}); following"
        return Begin(floor, f"{what}: no entries retained", note + " new ones")
    held = last_lsn - floor + 1
    note = (
        f"{what}: {where} retains only LSN {floor}..{last_lsn} ({held} entries); "
        f"starting at LSN {floor}"
    )
    return Begin(floor, f"{what}: the first retained LSN", note)


def _at_time(time_us: int, text: str, source: Client) -> Begin:
    what = f"--from-time {text}"
    try:
        found = source.lsn_at_time(time_us)
    except RemoteError as exc:
        if exc.code == pb.ERROR_BAD_REQUEST:  # a node older than LsnAtTime
            raise KevoError(f"{what} needs LsnAtTime, which {source.node} refused: {exc}") from None
        raise
    if not found.lsn:
        note = (
            f"{what}: nothing on {source.node} was committed at or after it (its last LSN is "
            f"{found.last_lsn}); following new entries"
        )
        return Begin(found.last_lsn + 1, f"{what}: after the last commit", note)
    why = f"{what}: LSN {found.lsn}, committed {format_time_us(found.commit_time_us)}"
    if found.lsn <= found.retained_from_lsn and found.commit_time_us > time_us:
        note = (
            f"{what} is before the oldest entry {source.node} retains (LSN {found.lsn}, "
            f"committed {format_time_us(found.commit_time_us)}); starting there"
        )
        return Begin(found.lsn, why, note)
    return Begin(found.lsn, why)
