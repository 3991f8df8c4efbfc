"""The simulated network: every node serves, and any node may follow any other.

Every node has a PUB (``publish``) and a ROUTER (``on_request``); a follower has one DEALER
and one SUB pointed at its current upstream (``connect``). Delivery keeps ZeroMQ's
guarantees and no more:

- each direction of each pair is FIFO, with random latency; nothing is duplicated;
- a (re)connect gives the follower's DEALER a new identity: replies to the old one are lost,
  as is whatever was in flight on the old SUB;
- a down or cut-off node sends and receives nothing; a cut is of the stream, of the
  requests, or of both (``partition``), and a cut DEALER connection may come back under a
  new identity (``rebind``), as TCP reconnects do;
- PUB is at-most-once: a message may be lost (``pub_drop``), and a SUB that (re)subscribed
  receives nothing until its subscription reached the PUB (``slow_join_max_ms``); a ROUTER
  drops replies at its high-water mark (``reply_drop``); ``drop`` loses any message.

The follower finds what the stream lost by its upstream's beacons.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.testing.messages import Reply, Request, StreamMessage
from kevo_repl.testing.scheduler import Scheduler

__all__ = ["Mesh", "MeshHandlers", "MeshParams"]


@dataclass(slots=True)
class MeshHandlers:
    on_request: Callable[[bytes, str, Request], None]  # (peer identity, follower name, msg)
    on_reply: Callable[[bytes, Reply], None]  # (our identity it was sent to, msg)
    on_stream: Callable[[str, StreamMessage], None]  # (publisher, msg)


@dataclass(slots=True)
class MeshParams:
    max_latency_ms: int = 4
    drop: float = 0.0  # any message, while links are up
    pub_drop: float = 0.0  # PUB/SUB loss per message (HWM, slow consumer)
    reply_drop: float = 0.0  # ROUTER -> DEALER loss per message (HWM)
    slow_join_max_ms: int = 0  # a (re)subscribed SUB misses up to this much of the stream


@dataclass(slots=True)
class _Port:
    handlers: MeshHandlers
    up: bool = False
    upstream: str = ""
    epoch: int = 0  # bumped by every (re)connect: the DEALER identity
    sub_epoch: int = 0  # bumped by every (re)subscription and stream cut
    stream_cut_until: int = 0
    requests_cut_until: int = 0
    sub_ready_ms: int = 0
    last_delivery: dict[tuple[str, str], int] = field(default_factory=dict)


class Mesh:
    """Carries messages between named nodes, losing them as ZeroMQ over TCP would."""

    def __init__(self, sched: Scheduler, rng: random.Random, params: MeshParams) -> None:
        self.sched, self.rng, self.params = sched, rng, params
        self._ports: dict[str, _Port] = {}
        self.stats = {"delivered": 0, "pub_sent": 0, "pub_lost": 0, "req_lost": 0, "rep_lost": 0}

    def attach(self, name: str, handlers: MeshHandlers) -> None:
        self._ports[name] = _Port(handlers)

    # ---- node lifecycle and links -------------------------------------------------------------

    def set_up(self, name: str, up: bool) -> None:
        port = self._ports[name]
        port.up = up
        if not up:
            port.upstream = ""
            port.epoch += 1
            port.sub_epoch += 1
        elif self.params.slow_join_max_ms:  # a restarted PUB: its subscribers join again
            for follower in self._ports.values():
                if follower.upstream == name:
                    self._resubscribe(follower)

    def connect(self, name: str, upstream: str) -> bytes:
        """Point ``name``'s DEALER and SUB at ``upstream`` (or nowhere); its new identity."""
        port = self._ports[name]
        if upstream != port.upstream and self.params.slow_join_max_ms:
            self._resubscribe(port)
        port.upstream = upstream
        port.epoch += 1
        port.sub_epoch += 1
        return self.identity(name)

    def rebind(self, name: str) -> None:
        """The DEALER's TCP connection broke and came back: a new identity, the SUB kept."""
        self._ports[name].epoch += 1

    def identity(self, name: str) -> bytes:
        return b"%s#%d" % (name.encode(), self._ports[name].epoch)

    def upstream_of(self, name: str) -> str:
        return self._ports[name].upstream

    # ---- faults -------------------------------------------------------------------------------

    def partition(
        self, name: str, duration_ms: int, stream: bool = True, requests: bool = True
    ) -> None:
        port = self._ports[name]
        until = self.sched.now + duration_ms
        if stream:
            port.stream_cut_until = max(port.stream_cut_until, until)
            port.sub_epoch += 1
            if self.params.slow_join_max_ms:
                self.sched.at(until, self._stream_healed, port)
        if requests:
            port.requests_cut_until = max(port.requests_cut_until, until)

    def heal_all(self) -> None:
        """Faults stop: links come back, and only the PUB's own losses remain."""
        for port in self._ports.values():
            if port.stream_cut_until > self.sched.now and self.params.slow_join_max_ms:
                self._resubscribe(port)
            port.stream_cut_until = port.requests_cut_until = 0
        self.params.drop = self.params.reply_drop = 0.0

    def reachable(self, a: str, b: str, stream: bool = False) -> bool:
        pa, pb = self._ports[a], self._ports[b]
        now = self.sched.now
        if not (pa.up and pb.up):
            return False
        if stream:
            return pa.stream_cut_until <= now and pb.stream_cut_until <= now
        return pa.requests_cut_until <= now and pb.requests_cut_until <= now

    # ---- sending ------------------------------------------------------------------------------

    def request(self, name: str, msg: Request) -> None:
        """From ``name``'s DEALER to its upstream's ROUTER."""
        port = self._ports[name]
        to = port.upstream
        if to:
            ident = self.identity(name)
            handler = self._ports[to].handlers.on_request
            self._send(name, to, lambda: handler(ident, name, msg), "req")

    def reply(self, server: str, peer: bytes, msg: Reply) -> None:
        """From ``server``'s ROUTER to the DEALER identity ``peer`` (lost if it reconnected)."""
        name = peer.split(b"#")[0].decode()
        port = self._ports.get(name)
        if port is None:
            return
        drop = self.params.reply_drop
        if drop and self.rng.random() < drop:
            self.stats["rep_lost"] += 1
            return

        def deliver() -> None:
            if self.identity(name) == peer and port.upstream == server:
                port.handlers.on_reply(peer, msg)
            else:
                self.stats["rep_lost"] += 1

        self._send(server, name, deliver, "rep")

    def publish(self, server: str, msg: StreamMessage) -> None:
        drop, now = self.params.pub_drop, self.sched.now
        for name, port in self._ports.items():
            if port.upstream != server:
                continue
            self.stats["pub_sent"] += 1
            if now < port.sub_ready_ms or (drop and self.rng.random() < drop):
                self.stats["pub_lost"] += 1
                continue
            epoch = port.sub_epoch

            def deliver(port: _Port = port, epoch: int = epoch) -> None:
                if port.sub_epoch == epoch and port.upstream == server:
                    port.handlers.on_stream(server, msg)
                else:
                    self.stats["pub_lost"] += 1

            self._send(server, name, deliver, "pub")

    # ---- internals ----------------------------------------------------------------------------

    def _send(self, src: str, dst: str, deliver: Callable[[], None], kind: str) -> None:
        stream = kind == "pub"
        drop = self.params.drop
        if not self.reachable(src, dst, stream) or (drop and self.rng.random() < drop):
            self.stats[kind + "_lost"] += 1
            return
        port = self._ports[dst]
        key = (src, dst)
        at = max(
            port.last_delivery.get(key, 0),
            self.sched.now + self.rng.randint(1, self.params.max_latency_ms),
        )
        port.last_delivery[key] = at

        def arrive() -> None:
            if self.reachable(src, dst, stream):
                self.stats["delivered"] += 1
                deliver()
            else:
                self.stats[kind + "_lost"] += 1

        self.sched.at(at, arrive)

    def _resubscribe(self, port: _Port) -> None:
        port.sub_ready_ms = self.sched.now + self.rng.randint(0, self.params.slow_join_max_ms)

    def _stream_healed(self, port: _Port) -> None:
        if port.stream_cut_until == self.sched.now and port.up:  # not cut again meanwhile
            self._resubscribe(port)
