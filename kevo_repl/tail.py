"""``kevo-repl tail``: a node's replication stream as entries, from any LSN, no gap, no duplicate.

The tail joins the way a replica does (DESIGN.md section 4), so the Clone-pattern race cannot
lose an entry: subscribe to the node's PUB first, then catch up over ``WalSync`` from the
requested LSN, then follow live. A record is printed from the next expected LSN on when it
covers that LSN, dropped when it ends before it, and a record that starts after it (the PUB
dropped something, or we joined late) sends the tail back to ``WalSync``. A beacon announcing
an LSN we have not seen does the same, so a lost tail of the stream is noticed while idle.

A replica serves reads, status and its own stream, not ``WalSync``. Against a replica the
history comes from its primary (named in its Status) while the live records come from the
replica's PUB: the records are byte-identical, so the rule above merges them. Catch-up from
the primary stops at the last LSN the replica is known to have applied, so the tail never
shows what the replica has not applied yet.

Where it starts (``tail_start``) is resolved once subscribed, so nothing committed meanwhile
is missed; a relative start (``--from-lsn -N``, ``--from-time``) that retention overtakes
before anything is shown moves up to the WAL's first LSN, with a note.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import zmq

from kevo_repl.adapters.security import ClientCurve
from kevo_repl.adapters.zmq_io import SocketOptions, connect_socket, recv_frames_nowait
from kevo_repl.client import Client, NodeUnreachableError, RemoteError, parse_node
from kevo_repl.core.errors import KevoError, ProtocolError, UsageError
from kevo_repl.core.ops import OP_DELETE
from kevo_repl.core.record import verify_wire_record
from kevo_repl.core.text import printable
from kevo_repl.tail_start import TailStart, resolve_start
from kevo_repl.wire import pb
from kevo_repl.wire.batch import decode_batch
from kevo_repl.wire.envelope import (
    TOPIC_BEACON,
    TOPIC_WAL,
    decode_beacon,
    split_stream_frame,
)

__all__ = [
    "Entry",
    "HistoryChangedError",
    "RetainedAwayError",
    "StreamTail",
    "TailStats",
    "entries_of_record",
    "entry_json",
    "entry_text",
    "printable",
    "text_fields",
]

_SYNC_BYTES = 1 << 20


@dataclass(slots=True)
class TailStats:
    """How the entries arrived: tests and ``--log-level debug`` use it to see the paths taken."""

    live_records: int = 0  # printed from the node's PUB
    synced_records: int = 0  # printed from WalSync responses
    syncs: int = 0  # WalSync requests
    gaps: int = 0  # records that started past the next LSN (a drop or a late join)
    dropped: int = 0  # records already shown


@dataclass(frozen=True, slots=True)
class Entry:
    lsn: int
    op: str  # "put" | "delete"
    key: bytes
    value: bytes


class RetainedAwayError(KevoError):
    """The WAL no longer holds the LSN the tail needs."""

    def __init__(self, node: str, lsn: int, retained_from_lsn: int) -> None:
        where = f"its WAL starts at LSN {retained_from_lsn}" if retained_from_lsn else ""
        super().__init__(
            f"LSN {lsn} was retained away on {node}"
            + (f"; {where} (use --from-lsn {retained_from_lsn} or later)" if where else "")
        )
        self.lsn = lsn
        self.retained_from_lsn = retained_from_lsn


class HistoryChangedError(KevoError):
    """The node's data now belongs to another history (wiped and recreated)."""


def entries_of_record(
    record: bytes | memoryview, from_lsn: int
) -> tuple[int, int, bytes, list[Entry]]:
    """``(first_lsn, last_lsn, history_id, entries from from_lsn on)`` of one checked record."""
    decoded = verify_wire_record(record)
    batch = decode_batch(decoded.payload)
    if len(batch.ops) != decoded.count:
        raise ProtocolError(
            f"record [{decoded.first_lsn}, {decoded.last_lsn}] holds {len(batch.ops)} entries"
        )
    first = decoded.first_lsn
    start = max(0, from_lsn - first)
    entries = [
        Entry(
            first + i,
            "delete" if batch.ops[i] == OP_DELETE else "put",
            batch.keys[i],
            batch.values[i],
        )
        for i in range(start, decoded.count)
    ]
    return first, decoded.last_lsn, batch.history_id, entries


class StreamTail:
    """Yields a node's entries in LSN order; one instance per tail (owns its sockets)."""

    def __init__(
        self,
        node: str,
        *,
        timeout_ms: int = 5000,
        sync_bytes: int = _SYNC_BYTES,
        curve: ClientCurve | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.node = node
        self.curve = curve
        self.timeout_ms = timeout_ms
        self.sync_bytes = sync_bytes
        self.note = note or (lambda _: None)  # a line for stderr (where the tail starts)
        self.next_lsn = self.start_lsn = 0
        self._may_rise = False  # a relative start may move up to the WAL's first LSN
        self._history = b""
        self._limit: int | None = None  # against a replica: the last LSN it has applied
        self._source = node  # where WalSync goes: the node, or a replica's primary
        self.stats = TailStats()

    def entries(
        self, start: TailStart | int | None = None, until_lsn: int | None = None
    ) -> Generator[Entry, None, None]:
        """From ``start`` (an LSN; default: what commits after now) on, forever, or until
        the entry with ``until_lsn`` (or the first past it) is shown. ``UsageError`` when
        ``until_lsn`` lies below the start."""
        if not isinstance(start, TailStart):
            start = TailStart(lsn=start)
        with Client(self.node, timeout_ms=self.timeout_ms, curve=self.curve) as c:
            status = c.status_message()
        lsn = status.lsn
        self._history = status.history_id
        if status.role != pb.ROLE_PRIMARY:
            if not status.primary:
                raise KevoError(f"{self.node} is a replica that does not name its primary")
            self._source = status.primary
            self._limit = lsn
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        host, port = parse_node(self.node)
        prepare = self.curve.apply if self.curve else None
        sub = connect_socket(ctx, zmq.SUB, host, port, SocketOptions(rcvhwm=100_000), prepare)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC_WAL)
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC_BEACON)
            curve = self.curve
            if curve is not None and self._source != self.node:
                curve = curve.for_node(self._source)  # the primary's key, not the replica's
            with Client(self._source, timeout_ms=self.timeout_ms, curve=curve) as source:

                def retained_from() -> int:
                    same = self._source == self.node
                    return (status if same else source.status_message()).retained_from_lsn

                begin = resolve_start(start, lsn, source, retained_from)
                if until_lsn is not None and until_lsn < begin.lsn:
                    raise UsageError(
                        f"--until-lsn {until_lsn} is below where the tail starts: "
                        f"LSN {begin.lsn} ({begin.why})"
                    )
                if begin.note:
                    self.note(begin.note)
                self.next_lsn = self.start_lsn = begin.lsn
                self._may_rise = start.relative
                run = self._run(sub, source, need_sync=self.next_lsn <= lsn)
                try:
                    for entry in run:
                        yield entry
                        if until_lsn is not None and entry.lsn >= until_lsn:
                            return
                finally:
                    run.close()
        finally:
            sub.close(0)
            ctx.term()

    # ---- the loop ----------------------------------------------------------------------------

    def _run(
        self, sub: zmq.Socket[bytes], source: Client, need_sync: bool
    ) -> Generator[Entry, None, None]:
        while True:
            if need_sync:
                yield from self._catch_up(source)
                need_sync = False
            if not sub.poll(self.timeout_ms, zmq.POLLIN):
                self._check_alive()
                continue
            while not need_sync:
                frames = recv_frames_nowait(sub, 1)
                if frames is None:
                    break
                if len(frames) != 1:
                    continue
                topic, rest = split_stream_frame(frames[0])
                if topic == TOPIC_BEACON:
                    need_sync = self._on_beacon(decode_beacon(rest))
                    continue
                first, last, history, entries = entries_of_record(rest, self.next_lsn)
                self._note_applied(last)
                if last < self.next_lsn:
                    self.stats.dropped += 1  # already shown (catch-up got there first)
                    continue
                if first > self.next_lsn:
                    self.stats.gaps += 1  # WalSync fills the gap; this record comes again
                    need_sync = True
                    continue
                self._check_history(history)
                self.stats.live_records += 1
                yield from entries
                self.next_lsn = last + 1

    def _catch_up(self, source: Client) -> Generator[Entry, None, None]:
        """WalSync from ``next_lsn`` until the source (or the replica's limit) is reached."""
        while True:
            self.stats.syncs += 1
            try:
                resp = source.wal_sync(self.next_lsn, self.sync_bytes)
            except RemoteError as exc:
                if exc.code == pb.ERROR_TOO_OLD and self._rise(exc.retained_from_lsn):
                    continue
                if exc.code == pb.ERROR_TOO_OLD:
                    raise RetainedAwayError(
                        self._source, self.next_lsn, exc.retained_from_lsn
                    ) from None
                raise
            except NodeUnreachableError as exc:
                if self._source == self.node:
                    raise
                raise NodeUnreachableError(
                    f"{self.node} is a replica; its history comes from its primary: {exc}"
                ) from None
            self._check_history(resp.history_id)
            progressed = False
            for record in resp.records:
                first, last, history, entries = entries_of_record(record, self.next_lsn)
                if self._limit is not None and last > self._limit:
                    return  # the replica has not applied it yet; its PUB will bring it
                if last < self.next_lsn:
                    continue
                if first > self.next_lsn:
                    raise ProtocolError(
                        f"WalSync from {self.next_lsn} on {self._source} began at {first}"
                    )
                self._check_history(history)
                self.stats.synced_records += 1
                yield from entries
                self.next_lsn = last + 1
                progressed = True
            end = resp.primary_lsn if self._limit is None else min(resp.primary_lsn, self._limit)
            if not progressed or self.next_lsn > end:
                return

    # ---- bookkeeping -------------------------------------------------------------------------

    def _rise(self, retained_from_lsn: int) -> bool:
        """Retention passed a relative start before anything was shown: start higher."""
        if not (self._may_rise and self.next_lsn == self.start_lsn < retained_from_lsn):
            return False
        self.note(
            f"LSN {self.next_lsn} was retained away on {self._source} meanwhile; "
            f"starting at LSN {retained_from_lsn}, the first its WAL holds"
        )
        self.next_lsn = self.start_lsn = retained_from_lsn
        return True

    def _on_beacon(self, beacon: pb.Beacon) -> bool:
        """True when the beacon names an LSN we have not seen: the stream lost a tail."""
        self._note_applied(beacon.last_lsn)
        return beacon.last_lsn >= self.next_lsn

    def _note_applied(self, lsn: int) -> None:
        if self._limit is not None:
            self._limit = max(self._limit, lsn)

    def _check_history(self, history: bytes) -> None:
        if not history:
            return
        if not self._history:
            self._history = history
        elif history != self._history:
            raise HistoryChangedError(
                f"{self.node} now serves history {history.hex()}, not {self._history.hex()}: "
                "its data was replaced; start the tail again"
            )

    def _check_alive(self) -> None:
        """Silence longer than the timeout (beacons come every ~200 ms): is it still there?"""
        with Client(self.node, timeout_ms=self.timeout_ms, curve=self.curve) as c:
            try:
                c.status_message()
            except NodeUnreachableError as exc:
                raise NodeUnreachableError(f"stream from {self.node} went silent: {exc}") from None


# ---- output ----------------------------------------------------------------------------------


def entry_text(e: Entry) -> str:
    """``LSN<TAB>op<TAB>key[<TAB>value]`` for people; tabs, newlines and bad UTF-8 escaped."""
    if e.op == "delete":
        return f"{e.lsn}\tdelete\t{printable(e.key)}"
    return f"{e.lsn}\tput\t{printable(e.key)}\t{printable(e.value)}"


def entry_json(e: Entry) -> dict[str, Any]:
    """``{"lsn", "op", "key", "value"}``; ``key_b64``/``value_b64`` when not valid UTF-8."""
    doc: dict[str, Any] = {"lsn": e.lsn, "op": e.op, **text_fields(key=e.key)}
    if e.op == "delete":
        doc["value"] = None
    else:
        doc.update(text_fields(value=e.value))
    return doc


def text_fields(**fields: bytes) -> dict[str, str]:
    """Each bytes field as UTF-8 text, or as ``NAME_b64`` when it is not valid UTF-8."""
    doc: dict[str, str] = {}
    for name, raw in fields.items():
        try:
            doc[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            doc[f"{name}_b64"] = base64.b64encode(raw).decode("ascii")
    return doc
