"""The WAN profile does what it says: the round trip it adds, the rate it allows, and
nothing left behind (namespaces, the delay-line process)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess

import pytest

from bench.wan_net import LinkProfile, Wan, skip_reason
from bench.wan_probe import measure_bulk, measure_rtt, ping, probe_server

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

PORT = 5000  # inside side b's own namespace: nothing else listens there


def _our_namespaces() -> list[str]:
    """Namespaces and host links of ours still there (bench.wan_net's names)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    ours = re.compile(rf"kwr?{os.getpid() % 100000}x")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    host = re.findall(rf"kwc{os.getpid() % 100000}x\d+", links.stdout)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ours.match(ln)] + host


def _rtts(wan: Wan, count: int = 20) -> list[float]:
    with probe_server(wan.exec_prefix("b"), wan.address("b"), PORT):
        return measure_rtt(wan.exec_prefix("a"), f"{wan.address('b')}:{PORT}", count)


def test_rtt_is_the_profiles() -> None:
    with Wan(["a", "b"], LinkProfile(rtt_ms=40)) as wan:
        rtts = _rtts(wan)
        assert wan.mode in ("tun", "kernel")
    assert min(rtts) >= 40, rtts
    assert statistics.median(rtts) < 55, rtts
    assert wan.mode != "tun" or wan.line_stats["packets"] > 0  # the line ended and reported
    assert _our_namespaces() == []


def test_no_profile_adds_nothing() -> None:
    with Wan(["a", "b"]) as wan:
        rtts = _rtts(wan)
        assert wan.mode == "direct"
        with probe_server(wan.exec_prefix("b"), wan.address("b"), PORT):  # from the host
            host_rtts = ping(wan.address("b"), PORT, 5, timeout=5)
    assert statistics.median(rtts) < 5, rtts
    assert statistics.median(host_rtts) < 5, host_rtts
    assert _our_namespaces() == []


def test_rate_bounds_a_bulk_transfer() -> None:
    nbytes, mbit = 2_500_000, 20
    with Wan(["a", "b"], LinkProfile(rtt_ms=10, rate_mbit=mbit)) as wan:
        sent_before = wan.tx_bytes("a")
        with probe_server(wan.exec_prefix("b"), wan.address("b"), PORT):
            seconds = measure_bulk(wan.exec_prefix("a"), f"{wan.address('b')}:{PORT}", nbytes)
        on_wire = wan.tx_bytes("a") - sent_before
        got = wan.rx_bytes("b")
    implied = nbytes * 8 / (mbit * 1e6)
    assert seconds >= 0.95 * implied, (seconds, implied)
    assert seconds < 3 * implied + 0.5, (seconds, implied)
    assert nbytes <= on_wire < 1.1 * nbytes  # headers, but not every byte twice
    assert got >= nbytes
    assert _our_namespaces() == []


def test_cut_partitions_a_side_until_healed() -> None:
    with Wan(["a", "b"]) as wan, probe_server(wan.exec_prefix("b"), wan.address("b"), PORT):
        to = f"{wan.address('b')}:{PORT}"
        wan.cut("b")
        with pytest.raises(subprocess.CalledProcessError):
            measure_rtt(wan.exec_prefix("a"), to, 1, timeout=0.5)
        wan.heal()
        assert len(measure_rtt(wan.exec_prefix("a"), to, 3)) == 3
    assert _our_namespaces() == []
