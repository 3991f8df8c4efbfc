"""A simulated network where every node serves and any node may follow any other.

The single-primary simulator's ``Network`` has one server. After a failover a replica serves
its own followers and the old primary follows the new one, so here every node has a PUB
(``publish``) and a ROUTER (``on_request``), and a follower has one DEALER and one SUB
pointed at its current upstream (``connect``). Delivery keeps ZeroMQ's guarantees: each
direction of each pair is FIFO; a reconnect gives the follower a new identity, and replies
to the old one are lost; a partitioned or down node sends and receives nothing, and its SUB
misses what is published meanwhile (the follower finds the gap by its beacons).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.testing.messages import Reply, Request, StreamMessage
from kevo_repl.testing.scheduler import Scheduler

__all__ = ["Mesh", "MeshHandlers"]


@dataclass(slots=True)
class MeshHandlers:
    on_request: Callable[[bytes, str, Request], None]  # (peer identity, follower name, msg)
    on_reply: Callable[[bytes, Reply], None]  # (our identity it was sent to, msg)
    on_stream: Callable[[str, StreamMessage], None]  # (publisher, msg)


@dataclass(slots=True)
class _Port:
    handlers: MeshHandlers
    up: bool = False
    upstream: str = ""
    epoch: int = 0  # bumped by every (re)connect: the DEALER identity
    partitioned_until: int = 0
    last_delivery: dict[tuple[str, str], int] = field(default_factory=dict)


class Mesh:
    """Latency 1..``max_latency_ms``; each message lost with ``drop`` while links are up."""

    def __init__(
        self, sched: Scheduler, rng: random.Random, max_latency_ms: int = 4, drop: float = 0.0
    ) -> None:
        self.sched, self.rng = sched, rng
        self.max_latency_ms, self.drop = max_latency_ms, drop
        self._ports: dict[str, _Port] = {}
        self.stats = {"delivered": 0, "lost": 0}

    def attach(self, name: str, handlers: MeshHandlers) -> None:
        self._ports[name] = _Port(handlers)

    def set_up(self, name: str, up: bool) -> None:
        port = self._ports[name]
        port.up = up
        if not up:
            port.upstream = ""
            port.epoch += 1

    def connect(self, name: str, upstream: str) -> bytes:
        """Point ``name``'s DEALER and SUB at ``upstream`` (or nowhere); its new identity."""
        port = self._ports[name]
        port.upstream = upstream
        port.epoch += 1
        return self.identity(name)

    def identity(self, name: str) -> bytes:
        return b"%s#%d" % (name.encode(), self._ports[name].epoch)

    def upstream_of(self, name: str) -> str:
        return self._ports[name].upstream

    def partition(self, name: str, duration_ms: int) -> None:
        port = self._ports[name]
        port.partitioned_until = max(port.partitioned_until, self.sched.now + duration_ms)

    def heal_all(self) -> None:
        for port in self._ports.values():
            port.partitioned_until = 0
        self.drop = 0.0

    def reachable(self, a: str, b: str) -> bool:
        pa, pb = self._ports[a], self._ports[b]
        now = self.sched.now
        return pa.up and pb.up and pa.partitioned_until <= now and pb.partitioned_until <= now

    # ---- sending --------------------------------------------------------------------------

    def request(self, name: str, msg: Request) -> None:
        """From ``name``'s DEALER to its upstream's ROUTER."""
        port = self._ports[name]
        to = port.upstream
        if to:
            ident = self.identity(name)
            self._send(name, to, lambda: self._ports[to].handlers.on_request(ident, name, msg))

    def reply(self, server: str, peer: bytes, msg: Reply) -> None:
        """From ``server``'s ROUTER to the DEALER identity ``peer`` (lost if it reconnected)."""
        name = peer.split(b"#")[0].decode()
        port = self._ports.get(name)
        if port is None:
            return

        def deliver() -> None:
            if self.identity(name) == peer and port.upstream == server:
                port.handlers.on_reply(peer, msg)

        self._send(server, name, deliver)

    def publish(self, server: str, msg: StreamMessage) -> None:
        for name, port in self._ports.items():
            if port.upstream == server:
                epoch = port.epoch

                def deliver(port: _Port = port, epoch: int = epoch) -> None:
                    if port.epoch == epoch and port.upstream == server:
                        port.handlers.on_stream(server, msg)

                self._send(server, name, deliver)

    def _send(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        if not self.reachable(src, dst) or (self.drop and self.rng.random() < self.drop):
            self.stats["lost"] += 1
            return
        port = self._ports[dst]
        key = (src, dst)
        at = max(
            port.last_delivery.get(key, 0),
            self.sched.now + self.rng.randint(1, self.max_latency_ms),
        )
        port.last_delivery[key] = at

        def arrive() -> None:
            if self.reachable(src, dst):
                self.stats["delivered"] += 1
                deliver()
            else:
                self.stats["lost"] += 1

        self.sched.at(at, arrive)
