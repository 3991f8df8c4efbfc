"""Who follows whom, and where each node runs: a flat fan-out or a relay tree, on loopback or
in the sides of a ``bench.wan_net`` WAN (the primary alone in one, so what it sends is what
leaves its namespace).

Why sides per tier, not per node: the claim measured is the primary's cost, so only the
primary needs a link of its own; relays and leaves share one side each (a side per node
would be 69 namespaces and veths for nothing measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.harness import LOOPBACK, BenchCluster, replica_caught_up, wait_until
from kevo_repl.client import Client
from kevo_repl.testing.ports import free_port_pair

__all__ = ["LOCAL", "Placement", "Side", "Topology", "flat", "follow", "pair", "tree"]


@dataclass(frozen=True)
class Side:
    """Where a tier's processes run: a command prefix, the address its nodes bind, and the
    namespace a Python probe process joins to sit beside them ("" for this namespace)."""

    prefix: tuple[str, ...] = ()
    host: str = LOOPBACK
    netns: str = ""


@dataclass(frozen=True)
class Placement:
    primary: Side = Side()
    relays: Side = Side()
    leaves: Side = Side()  # in a flat fan-out, the replicas

    @property
    def local(self) -> bool:
        return self.primary.netns == ""


LOCAL = Placement()


@dataclass
class Topology:
    """Who follows whom: relays follow the primary; leaves follow a relay (or the primary,
    in a flat fan-out, which has no relays). ``pids``: primary, relays, leaves in order."""

    primary: str
    relays: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    placement: Placement = LOCAL
    metrics_port: int = 0  # the primary's --metrics-port, if it serves one

    @property
    def followers(self) -> list[str]:
        return [*self.relays, *self.leaves]

    @property
    def targets(self) -> list[tuple[str, Side]]:
        """Every node with its side: primary, relays, leaves (the listeners' order)."""
        p = self.placement
        return [
            (self.primary, p.primary),
            *((a, p.relays) for a in self.relays),
            *((a, p.leaves) for a in self.leaves),
        ]


def follow(
    cluster: BenchCluster,
    specs: list[tuple[str, str]],
    timeout: float,
    side: Side = Side(),
    args: tuple[str, ...] = (),
) -> list[str]:
    """Start a replica per (name, upstream), all at once; returns addresses once all READY."""
    argv = [(n, ["--primary", up, "--id", n, *args]) for n, up in specs]
    addresses = cluster.start_all("replica", argv, timeout, prefix=side.prefix, host=side.host)
    for address in addresses:
        with Client(address, timeout_ms=5000) as c:
            wait_until("replica ready", replica_caught_up(c, 0, cluster), timeout, every=0.05)
    return addresses


def _primary(cluster: BenchCluster, side: Side, metrics_port: int = 0) -> str:
    metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
    address = cluster.spawn(
        "primary", "primary", "--fsync", "always", *metrics, prefix=side.prefix, host=side.host
    )
    cluster.wait_serving("primary")
    return address


def pair(cluster: BenchCluster, replicas: int = 1) -> tuple[str, list[str]]:
    """A primary (fsync=always) and ``replicas`` replicas, all READY, on loopback."""
    primary = _primary(cluster, Side())
    names = [f"r{i + 1}" for i in range(replicas)]
    return primary, follow(cluster, [(n, primary) for n in names], 60)


def flat(
    cluster: BenchCluster,
    replicas: int,
    placement: Placement = LOCAL,
    args: tuple[str, ...] = (),
    metrics: bool = False,
) -> Topology:
    """A primary and ``replicas`` replicas of it (in the leaves' side); ``args`` for every
    replica, ``metrics``: the primary serves its counters (``Topology.metrics_port``)."""
    port = free_port_pair() if metrics else 0
    primary = _primary(cluster, placement.primary, port)
    names = [f"r{i + 1}" for i in range(replicas)]
    specs = [(n, primary) for n in names]
    addresses = follow(cluster, specs, 60 + replicas, placement.leaves, args)
    pids = [cluster.pid(n) for n in ("primary", *names)]
    return Topology(primary, [], addresses, pids, placement, port)


def tree(
    cluster: BenchCluster,
    relays: int,
    leaves: int,
    placement: Placement = LOCAL,
    args: tuple[str, ...] = (),
    metrics: bool = False,
) -> Topology:
    """A primary, ``relays`` replicas of it, and ``leaves`` replicas of the relays (leaf i
    follows relay i mod R, so the relays have L/R leaves each, +-1)."""
    port = free_port_pair() if metrics else 0
    primary = _primary(cluster, placement.primary, port)
    timeout = 60 + leaves  # dozens of processes starting on two cores
    relay_names = [f"r{i + 1}" for i in range(relays)]
    specs = [(n, primary) for n in relay_names]
    relay_addresses = follow(cluster, specs, timeout, placement.relays, args)
    leaf_names = [f"l{i + 1}" for i in range(leaves)]
    specs = [(n, relay_addresses[i % relays]) for i, n in enumerate(leaf_names)]
    leaf_addresses = follow(cluster, specs, timeout, placement.leaves, args)
    pids = [cluster.pid(n) for n in ("primary", *relay_names, *leaf_names)]
    return Topology(primary, relay_addresses, leaf_addresses, pids, placement, port)
