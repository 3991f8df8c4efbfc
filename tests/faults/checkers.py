"""Invariant checkers for real node processes (DESIGN.md section 5), used by tests and the soak.

- ``verify_acked``: every key holds its last acknowledged write's value, or that of a later
  write with an unknown outcome (invariant 3; fsync=always);
- ``wait_converged``: replicas digest-equal to the primary at the same LSN (1, 4), timed;
- ``LsnMonitor``: samples every node's Status in a thread and flags an applied LSN that goes
  backwards within one history (2), and keeps the primary's per-replica bootstrap/catch-up
  counters across primary restarts (the primary's registry starts empty after each one);
- ``count_events``: counts a JSON log event (e.g. ``bootstrap_start``) across restarts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kevo_repl.client import Client
from kevo_repl.core.errors import KevoError
from kevo_repl.wire import pb
from tests.faults.load import Allowed
from tests.nodes import Node, converged, wait_for

# key -> its exact value, or every value it may hold (None: absent); see ``verify_acked``
Expected = Mapping[bytes, bytes | Allowed]

__all__ = [
    "Expected",
    "LsnMonitor",
    "count_events",
    "verify_acked",
    "wait_caught_up",
    "wait_converged",
]


def verify_acked(node: Node, expected: Expected, chunk: int = 2000) -> int:
    """Read back every key of ``expected`` (pipelined); fail naming each wrong one.

    ``expected`` maps a key to its exact value, or to the set of values it may hold
    (``AckLog.expected()``: the last acknowledged write, or a later one whose outcome is
    unknown; ``None`` for absent). An error answer to a read is wrong too, never "absent".
    Returns how many keys were verified.
    """
    keys = list(expected)
    wrong: list[str] = []
    with node.client(10_000) as c:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            reqs = [pb.Request(get=pb.GetRequest(key=k)) for k in part]
            for key, resp in zip(part, c.call_many(reqs, window=256), strict=True):
                if resp.WhichOneof("body") != "get":
                    wrong.append(f"{key!r}: read answered {resp.WhichOneof('body')} {resp}")
                    continue
                got = resp.get.value if resp.get.found else None
                want = expected[key]
                allowed: Allowed = want if isinstance(want, frozenset) else frozenset([want])
                if got not in allowed:
                    wrong.append(f"{key!r}: {_show(got)}, expected {_show_set(allowed)}")
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {len(keys)} keys on {node.name} do not hold what the "
            f"acknowledged writes allow, e.g. " + "; ".join(wrong[:5])
        )
    return len(keys)


def _show(value: bytes | None) -> str:
    return "absent" if value is None else repr(value[:40])


def _show_set(values: Allowed) -> str:
    shown = sorted(_show(v) for v in values)
    return shown[0] if len(shown) == 1 else "one of {" + ", ".join(shown) + "}"


def wait_converged(primary: Node, replicas: Iterable[Node], timeout_s: float = 60.0) -> float:
    """Seconds until every replica is digest-equal to the (quiescent) primary."""
    nodes = list(replicas)
    start = time.monotonic()
    wait_for("replicas digest-equal to the primary", lambda: converged(primary, *nodes), timeout_s)
    return time.monotonic() - start


def wait_caught_up(primary: Node, replicas: Iterable[Node], timeout_s: float = 60.0) -> float:
    """Seconds until every replica applied what the primary had committed when called.

    Works under load (the primary's digest moves on, so digest equality needs a pause).
    """
    start = time.monotonic()
    with primary.client() as c:
        target = c.status_message().lsn
    for r in replicas:

        def applied(node: Node = r) -> bool:
            node.assert_alive()
            with node.client(1000) as rc:
                return rc.status_message().lsn >= target

        wait_for(f"{r.name} to apply LSN {target}", applied, timeout_s)
    return time.monotonic() - start


def count_events(log_path: Path, event: str) -> int:
    """How many times ``event`` happened, from the JSON log (the log survives restarts).

    A line counts once, or ``refused`` times for the replica's rate-limited summaries of
    refused input (one line a second naming how many it refused).
    """
    if not log_path.exists():
        return 0
    n = 0
    for line in log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            n += int(doc.get("refused", 1))
    return n


@dataclass
class _Seen:
    history: bytes = b""
    lsn: int = 0


@dataclass
class LsnMonitor:
    """Samples Status of ``nodes`` every ``interval_s`` until ``stop()``; see module doc."""

    primary: Node
    replicas: list[Node]
    interval_s: float = 0.05
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    # per primary incarnation (pid): replica id -> (bootstraps, catchups), the max seen
    counters: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)
    errors_seen: dict[str, str] = field(default_factory=dict)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LsnMonitor:
        self._thread = threading.Thread(target=self._run, name="lsn-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def check(self) -> None:
        if self.violations:
            raise AssertionError("applied LSN went backwards: " + "; ".join(self.violations[:5]))

    def totals(self) -> dict[str, tuple[int, int]]:
        """Bootstraps and catch-ups per replica, summed over primary incarnations."""
        out: dict[str, tuple[int, int]] = {}
        for per in self.counters.values():
            for rid, (b, c) in per.items():
                ob, oc = out.get(rid, (0, 0))
                out[rid] = (ob + b, oc + c)
        return out

    def _run(self) -> None:
        clients: dict[str, Client] = {}
        try:
            while not self._stop.wait(self.interval_s):
                for node in [self.primary, *self.replicas]:
                    self._sample(node, clients)
                self.samples += 1
        finally:
            for c in clients.values():
                c.close()

    def _sample(self, node: Node, clients: dict[str, Client]) -> None:
        proc = node.proc
        if proc is None or proc.poll() is not None:
            return
        client = clients.get(node.name)
        if client is None or client.node != node.address:
            client = clients[node.name] = Client(node.address, timeout_ms=300)
        try:
            s = client.status_message()
        except KevoError:
            client.close()
            clients.pop(node.name, None)
            return
        if s.role == pb.ROLE_PRIMARY:
            per = self.counters.setdefault(proc.pid, {})
            for r in s.replicas:
                b, c = per.get(r.replica_id, (0, 0))
                per[r.replica_id] = (max(b, r.bootstraps), max(c, r.catchups))
        elif s.status == pb.STATUS_ERROR and s.error_message:
            self.errors_seen[node.name] = s.error_message
        seen = self._seen.setdefault(node.name, _Seen())
        if s.history_id == seen.history and s.lsn < seen.lsn:
            self.violations.append(f"{node.name}: {seen.lsn} -> {s.lsn}")
        if s.history_id:
            seen.history, seen.lsn = s.history_id, s.lsn
