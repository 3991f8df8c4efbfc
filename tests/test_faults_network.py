"""Network faults with namespaces and nftables (root): a partition healed, 5% packet loss.

Replica ``r0`` runs inside a network namespace joined to the host by a veth pair; the
primary binds the host end's address, ``r1`` follows on loopback. Drop rules live in an
nftables table inside that namespace, so the host's own rules are never touched. netem is
not available on these kernels; ``numgen random`` drops give the loss instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb
from tests.faults.checkers import LsnMonitor, count_events, verify_acked, wait_converged
from tests.faults.load import Writer
from tests.faults.system import NetNs, skip_reason
from tests.nodes import Cluster, Node, replica_view, wait_for


@dataclass
class Net:
    ns: NetNs
    cluster: Cluster
    primary: Node
    r0: Node  # inside the namespace
    r1: Node  # on loopback


def _start(cluster: Cluster, node: Node) -> Node:
    cluster.nodes.append(node)
    node.start()
    node.wait_serving()
    return node


@pytest.fixture
def net(cluster: Cluster) -> Iterator[Net]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ns = NetNs()
    try:
        ns.create()
        root = cluster.root
        port = free_port_pair()
        argv = cluster._cmd(
            "primary", "--data", str(root / "primary"), "--bind", ns.host_ip, "--port", str(port)
        )
        primary = _start(
            cluster, Node("primary", port, argv, root / "primary.log", host=ns.host_ip)
        )
        rport = free_port_pair()
        argv = [
            *ns.exec_prefix,
            *cluster._cmd(
                "replica", "--data", str(root / "r0"), "--primary", primary.address,
                "--bind", ns.ns_ip, "--port", str(rport), "--id", "r0", "--heartbeat-ms", "100",
            ),
        ]  # fmt: skip
        r0 = _start(cluster, Node("r0", rport, argv, root / "r0.log", host=ns.ns_ip))
        r1 = cluster.replica("r1", primary.address)
        yield Net(ns, cluster, primary, r0, r1)
    finally:
        cluster.close()  # processes first: the namespace goes once nobody is inside
        ns.close()


def status_of(primary: Node, rid: str) -> int | None:
    v = replica_view(primary, rid)
    return int(v["status"]) if v else None  # type: ignore[call-overload]


def test_partition_and_heal_converges_without_bootstrap(net: Net) -> None:
    writer = Writer(net.primary.address, max_writes=50_000, max_seconds=120)
    monitor = LsnMonitor(net.primary, [net.r0, net.r1]).start()
    writer.start()
    try:
        wait_for("load running", lambda: len(writer.acked) > 200)
        net.ns.partition()
        try:
            wait_for(
                "primary marks r0 disconnected",
                lambda: status_of(net.primary, "r0") == pb.STATUS_DISCONNECTED,
            )
            during = len(writer.acked)
            wait_for("writes go on during the partition", lambda: len(writer.acked) > during + 300)
            assert status_of(net.primary, "r1") == pb.STATUS_READY  # r1 unaffected
        finally:
            net.ns.heal()
        wait_for(
            "r0 ready after healing",
            lambda: status_of(net.primary, "r0") == pb.STATUS_READY,
            60,
        )
    finally:
        writer.stop()
    seconds = wait_converged(net.primary, [net.r0, net.r1])
    monitor.stop()
    monitor.check()
    assert not writer.errors and writer.acked.refused == 0, (writer.errors, writer.acked)
    expected = writer.acked.expected()
    for node in (net.primary, net.r0, net.r1):
        verify_acked(node, expected)
    assert count_events(net.r0.log_path, "bootstrap_start") == 0
    print(f"acked={len(writer.acked)} converged {seconds:.2f}s after the load stopped")


def test_five_percent_packet_loss(net: Net) -> None:
    writer = Writer(net.primary.address, max_writes=50_000, max_seconds=120)
    monitor = LsnMonitor(net.primary, [net.r0, net.r1]).start()
    net.ns.loss(5)
    try:
        writer.start()
        wait_for("writes under loss", lambda: len(writer.acked) > 1500, 60)
        writer.stop()
        # Still lossy: TCP retransmits and WalSync repair get r0 there anyway.
        seconds = wait_converged(net.primary, [net.r0, net.r1], 90)
    finally:
        net.ns.heal()
        writer.stop()
    monitor.stop()
    monitor.check()
    assert not writer.errors and writer.acked.refused == 0, (writer.errors, writer.acked)
    verify_acked(net.r0, writer.acked.expected())
    assert count_events(net.r0.log_path, "bootstrap_start") == 0
    print(
        f"acked={len(writer.acked)} r0 converged {seconds:.2f}s after the load stopped, under loss"
    )
