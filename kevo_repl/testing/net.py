"""The simulated network: what ZeroMQ over TCP can do to the primary's PUB and ROUTER.

- PUB -> SUB is at-most-once and FIFO: a message is dropped with a per-seed probability, and
  everything is dropped while the subscriber is cut off, down, or still "slow-joining" (a
  SUB that (re)connected only receives once its subscription has reached the PUB). A real
  PUB never duplicates or reorders, so neither does this one.
- DEALER <-> ROUTER is FIFO with random latency. A connection break (partition, crash of
  either side, or the replica's own ``Reconnect``) loses everything in flight, and the ROUTER
  sees the reconnected DEALER under a new routing id, as ZeroMQ assigns one per connection.
  Replies may also be dropped one by one, as a ROUTER does at its high-water mark.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.testing.messages import Reply, Request, StreamMessage
from kevo_repl.testing.scheduler import Scheduler

__all__ = ["NetParams", "Network"]


@dataclass(slots=True)
class NetParams:
    latency_min_ms: int = 1
    latency_max_ms: int = 8
    pub_drop: float = 0.0  # PUB/SUB loss per message (HWM, slow consumer)
    reply_drop: float = 0.0  # ROUTER -> DEALER loss per message (HWM)
    slow_join_max_ms: int = 0  # a (re)connected SUB misses up to this much of the stream


@dataclass(slots=True)
class _Port:
    """One replica's two connections to the primary."""

    on_stream: Callable[[StreamMessage], None]
    on_reply: Callable[[Reply], None]
    up: bool = False
    epoch: int = 0  # DEALER connection number: a new one after every break
    sub_epoch: int = 0
    sub_ready_ms: int = 0
    pub_cut_until_ms: int = 0
    req_cut_until_ms: int = 0
    last_pub_ms: int = 0
    last_req_ms: int = 0
    last_rep_ms: int = 0


class Network:
    """Carries messages between one primary and named replicas, losing them as TCP would."""

    def __init__(self, sched: Scheduler, rng: random.Random, params: NetParams) -> None:
        self.sched = sched
        self.rng = rng
        self.params = params
        self.primary_up = False
        self._on_request: Callable[[bytes, Request], None] = lambda _peer, _msg: None
        self._ports: dict[str, _Port] = {}
        self._peers: dict[bytes, tuple[str, int]] = {}
        self.stats = {"pub_sent": 0, "pub_lost": 0, "req_lost": 0, "rep_lost": 0}

    # ---- wiring ---------------------------------------------------------------------------

    def attach_primary(self, on_request: Callable[[bytes, Request], None]) -> None:
        self._on_request = on_request

    def attach_replica(
        self,
        name: str,
        on_stream: Callable[[StreamMessage], None],
        on_reply: Callable[[Reply], None],
    ) -> None:
        self._ports[name] = _Port(on_stream, on_reply)

    def peer_of(self, name: str) -> bytes:
        """The routing id the primary currently sees for this replica's DEALER."""
        port = self._ports[name]
        peer = f"{name}/{port.epoch}".encode()
        self._peers[peer] = (name, port.epoch)
        return peer

    # ---- node lifecycle -------------------------------------------------------------------

    def set_primary_up(self, up: bool) -> None:
        self.primary_up = up
        for name, port in self._ports.items():
            self._break(port, stream=True)
            if up and port.up:
                self._resubscribe(name, port)

    def set_replica_up(self, name: str, up: bool) -> None:
        port = self._ports[name]
        port.up = up
        self._break(port, stream=True)
        if up:
            self._resubscribe(name, port)

    def reconnect(self, name: str) -> None:
        """The replica closed its DEALER and opened a new one: in-flight messages are gone."""
        self._break(self._ports[name], stream=False)

    # ---- faults ---------------------------------------------------------------------------

    def partition(self, name: str, stream: bool, requests: bool, duration_ms: int) -> None:
        port = self._ports[name]
        until = self.sched.now + duration_ms
        if stream:
            port.pub_cut_until_ms = max(port.pub_cut_until_ms, until)
            port.sub_epoch += 1
            self.sched.at(until, self._stream_healed, name)
        if requests:
            port.req_cut_until_ms = max(port.req_cut_until_ms, until)
            port.epoch += 1

    def heal_all(self) -> None:
        now = self.sched.now
        for name, port in self._ports.items():
            if port.pub_cut_until_ms > now:
                port.pub_cut_until_ms = now
                self._stream_healed(name)
            port.req_cut_until_ms = min(port.req_cut_until_ms, now)

    # ---- traffic --------------------------------------------------------------------------

    def publish(self, msg: StreamMessage) -> None:
        if not self.primary_up:
            return
        now = self.sched.now
        drop = self.params.pub_drop
        for port in self._ports.values():
            self.stats["pub_sent"] += 1
            if not port.up or port.pub_cut_until_ms > now or now < port.sub_ready_ms:
                self.stats["pub_lost"] += 1
                continue
            if drop and self.rng.random() < drop:
                self.stats["pub_lost"] += 1
                continue
            port.last_pub_ms = max(port.last_pub_ms, now + self._latency())
            self.sched.at(port.last_pub_ms, self._deliver_stream, port, port.sub_epoch, msg)

    def request(self, name: str, msg: Request) -> None:
        port = self._ports[name]
        now = self.sched.now
        if not (port.up and self.primary_up) or port.req_cut_until_ms > now:
            self.stats["req_lost"] += 1
            return
        port.last_req_ms = max(port.last_req_ms, now + self._latency())
        self.sched.at(port.last_req_ms, self._deliver_request, name, port, port.epoch, msg)

    def reply(self, peer: bytes, msg: Reply) -> None:
        name, epoch = self._peers.get(peer, ("", -1))
        port = self._ports.get(name)
        now = self.sched.now
        if port is None or not (port.up and self.primary_up) or port.epoch != epoch:
            self.stats["rep_lost"] += 1
            return
        if port.req_cut_until_ms > now:
            self.stats["rep_lost"] += 1
            return
        if self.params.reply_drop and self.rng.random() < self.params.reply_drop:
            self.stats["rep_lost"] += 1
            return
        port.last_rep_ms = max(port.last_rep_ms, now + self._latency())
        self.sched.at(port.last_rep_ms, self._deliver_reply, port, epoch, msg)

    # ---- internals ------------------------------------------------------------------------

    def _latency(self) -> int:
        return self.rng.randint(self.params.latency_min_ms, self.params.latency_max_ms)

    def _break(self, port: _Port, stream: bool) -> None:
        port.epoch += 1
        if stream:
            port.sub_epoch += 1

    def _resubscribe(self, name: str, port: _Port) -> None:
        join = self.params.slow_join_max_ms
        port.sub_ready_ms = self.sched.now + (self.rng.randint(0, join) if join else 0)

    def _stream_healed(self, name: str) -> None:
        port = self._ports[name]
        if port.pub_cut_until_ms == self.sched.now and port.up:  # not re-cut meanwhile
            self._resubscribe(name, port)

    def _deliver_stream(self, port: _Port, sub_epoch: int, msg: StreamMessage) -> None:
        if port.up and port.sub_epoch == sub_epoch and self.primary_up:
            port.on_stream(msg)

    def _deliver_request(self, name: str, port: _Port, epoch: int, msg: Request) -> None:
        if port.up and port.epoch == epoch and self.primary_up:
            self._on_request(self.peer_of(name), msg)
        else:
            self.stats["req_lost"] += 1

    def _deliver_reply(self, port: _Port, epoch: int, msg: Reply) -> None:
        if port.up and port.epoch == epoch and self.primary_up:
            port.on_reply(msg)
        else:
            self.stats["rep_lost"] += 1
