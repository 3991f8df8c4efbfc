"""An etcd-coordinated group of real ``kevo-repl node`` processes, a load that records who
accepted each write, and the split-brain check, for ``tests/test_failover_etcd.py`` and
``bench/soak.py --failover``.

``HaWriter`` puts with ``wait_replicas=1`` to whichever member accepts: a refusal that names
the leader moves it there, silence moves it to the next member. Every acknowledged write
(``replicas_applied >= 1``) is recorded with the node that accepted it, that node's history
(asked when the writer moved to it) and the client's send and receive times. A write that
timed out waiting for its replica, or had no answer, has an unknown outcome.

``overlapping_terms`` finds two *terms* (a node on one history) that both certainly accepted
writes while the other did too: term T1 acknowledged a write sent after T2 had acknowledged
one, and the reverse. One leader at a time never produces that; a split brain does.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kevo_repl.adapters.etcd_kv import EtcdKV
from kevo_repl.client import Client, NodeUnreachableError, RemoteError
from kevo_repl.core.election import Scope
from kevo_repl.ha.local_etcd import ETCD_MISSING, etcd_binary
from kevo_repl.ha.scope import ScopeKeys, read_scope
from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb
from tests.faults.load import AckLog, write_key
from tests.nodes import Node, wait_for

__all__ = [
    "Ack",
    "HaGroup",
    "HaWriter",
    "overlapping_terms",
    "require_etcd",
    "wait_group_converged",
]


def require_etcd() -> None:
    """Failover is tested against a real etcd or not at all: fail (never skip) without it."""
    if etcd_binary() is None:
        pytest.fail(ETCD_MISSING)


@dataclass
class HaGroup:
    """Members started by one test or soak; ``close`` ends each by PID."""

    root: Path
    etcd_url: str
    scope: str = "t"
    ttl_s: int = 3
    host: str = "127.0.0.1"
    members: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kv = EtcdKV(self.etcd_url, timeout_s=2.0)
        self.keys = ScopeKeys(self.scope)

    def argv(self, member_id: str, port: int, host: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "kevo_repl", "--log-format", "json", "node",
            "--data", str(self.root / member_id), "--id", member_id,
            "--bind", host, "--port", str(port),
            "--etcd", self.etcd_url, "--scope", self.scope, "--ttl-s", str(self.ttl_s),
            *extra,
        ]  # fmt: skip

    def start(
        self, member_id: str, *extra: str, prefix: list[str] | None = None, host: str = ""
    ) -> Node:
        """Start (or restart) a member; ``prefix`` runs it inside a namespace."""
        node = self.members.get(member_id)
        if node is None:
            host = host or self.host
            port = free_port_pair()
            argv = [*(prefix or []), *self.argv(member_id, port, host, *extra)]
            node = Node(member_id, port, argv, self.root / f"{member_id}.log", host=host)
            self.members[member_id] = node
        node.start()
        node.wait_serving()
        return node

    def read(self) -> Scope:
        return read_scope(self.kv, self.keys)

    def leader_id(self) -> str:
        leader = self.read().leader
        return leader.id if leader else ""

    def wait_leader(self, *, other_than: str = "", timeout_s: float = 30.0) -> str:
        """A leader (not ``other_than``) whose node says it is an unfenced primary."""

        def ready() -> str:
            lid = self.leader_id()
            if not lid or lid == other_than or lid not in self.members:
                return ""
            with self.members[lid].client(500) as c:
                s = c.status()
            return lid if s.role == "primary" and not s.fenced else ""

        return wait_for(f"a leader other than {other_than!r}", ready, timeout_s)

    def switchover(self, to: str, timeout_s: float = 60.0) -> float:
        """Ask for a switchover through etcd (again, if the leader refused it: the target was
        not ready yet) until ``to`` leads with an unfenced primary; the seconds it took."""
        began = time.monotonic()

        def asked() -> bool:
            pending = self.read().switchover
            if pending is None or "error" in pending:
                request = {"id": uuid.uuid4().hex, "to": to, "timeout_s": 30}
                self.kv.put(self.keys.switchover, json.dumps(request))
            return self.leader_id() == to

        wait_for(f"{to} to take the leader key", asked, timeout_s)
        self.wait_leader()
        return time.monotonic() - began

    def alive(self) -> list[Node]:
        return [n for n in self.members.values() if n.proc and n.proc.poll() is None]

    def close(self) -> None:
        for node in self.members.values():
            if node.proc is not None and node.proc.poll() is None:
                node.stop(5)


@dataclass(frozen=True, slots=True)
class Ack:
    node: str
    history: str
    lsn: int
    sent: float  # time.monotonic() when sent, and when its answer came
    received: float


class HaWriter(threading.Thread):
    """Puts with ``wait_replicas=1`` to whichever member accepts (see the module doc)."""

    def __init__(
        self,
        addresses: Callable[[], list[str]],
        *,
        prefix: str = "ha",
        max_writes: int = 100_000,
        max_seconds: float = 120.0,
        timeout_ms: int = 1500,
    ) -> None:
        super().__init__(name=f"ha-writer-{prefix}", daemon=True)
        self.addresses = addresses
        self.prefix = prefix
        self.max_writes = max_writes
        self.max_seconds = max_seconds
        self.timeout_ms = timeout_ms
        self.log = AckLog()
        self.acks: list[Ack] = []
        self.errors: list[BaseException] = []
        self._stop_evt = threading.Event()
        self._at = 0

    def stop(self, join_s: float = 30.0) -> None:
        self._stop_evt.set()
        self.join(join_s)

    def _history(self, address: str) -> str | None:
        try:
            with Client(address, timeout_ms=500) as c:
                s = c.status()
        except (NodeUnreachableError, RemoteError):
            return None
        return s.history_id if s.role == "primary" and not s.fenced else None

    def run(self) -> None:
        end = time.monotonic() + self.max_seconds
        address, history, client = "", "", None
        i = 0
        try:
            while not self._stop_evt.is_set() and i < self.max_writes and time.monotonic() < end:
                if client is None:
                    candidates = self.addresses()
                    address = address or candidates[self._at % len(candidates)]
                    found = self._history(address)
                    if found is None:
                        self._at += 1
                        address = ""
                        self._stop_evt.wait(0.05)
                        continue
                    history = found
                    client = Client(address, timeout_ms=self.timeout_ms, follow_redirects=False)
                key = write_key(self.prefix, i)
                value = b"%s:%d:" % (self.prefix.encode(), i)
                i += 1
                sent = time.monotonic()
                try:
                    w = client.put(key, value, wait_replicas=1, timeout_ms=self.timeout_ms)
                except NodeUnreachableError:
                    self.log.add_unknown(key, value)
                    client.close()
                    client, address = None, ""
                    self._at += 1
                    continue
                except RemoteError as exc:
                    if exc.code == pb.ERROR_NOT_PRIMARY:
                        self.log.add_refused(key, str(exc))
                    else:
                        self.log.add_unknown(key, value)
                    client.close()
                    client = None
                    address = exc.primary if exc.code == pb.ERROR_NOT_PRIMARY else ""
                    self._at += 1
                    self._stop_evt.wait(0.02)
                    continue
                if w.replicas_applied < 1:  # durable on the leader only: may be rewound
                    self.log.add_unknown(key, value)
                    continue
                self.log.add(key, value, w.lsn)
                self.acks.append(Ack(address, history, w.lsn, sent, time.monotonic()))
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            if client is not None:
                client.close()


def overlapping_terms(acks: list[Ack]) -> list[str]:
    """Pairs of terms (node, history) that certainly accepted writes at the same time."""
    terms: dict[tuple[str, str], list[Ack]] = {}
    for a in acks:
        terms.setdefault((a.node, a.history), []).append(a)
    spans = {
        t: (min(a.received for a in got), max(a.sent for a in got)) for t, got in terms.items()
    }
    found: list[str] = []
    names = sorted(spans)
    for i, t1 in enumerate(names):
        for t2 in names[i + 1 :]:
            first1, last_sent1 = spans[t1]
            first2, last_sent2 = spans[t2]
            if first2 < last_sent1 and first1 < last_sent2:
                found.append(
                    f"{t1[0]} (history {t1[1][:8]}) and {t2[0]} (history {t2[1][:8]}) "
                    "both acknowledged writes while the other was acknowledging"
                )
    return found


def wait_group_converged(group: HaGroup, leader: str, timeout_s: float = 60.0) -> str:
    """Every live member digest-equal to the leader at the same LSN; the digest."""

    def same() -> str:
        want = group.members[leader].digest()
        for node in group.alive():
            if node.digest() != want:
                return ""
        return want.digest

    return wait_for("every member to converge on the leader", same, timeout_s)
