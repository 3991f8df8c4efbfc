"""A WAN between network namespaces: every side hangs off one router through its own veth.

Why namespaces: a replica across a real network pays round trips and a bandwidth ceiling
that loopback never shows. Each side gets a /30 of a 10.x.y.0/24 not in use on the host,
its own namespace, and a token bucket (tbf) on both ends of its veth, so both directions
are rate-limited. Traffic between sides crosses the router, where the delay is added once
per crossing (one way = ``rtt_ms / 2``): by the kernel's netem on the router's veth ends
when this kernel has it, else by ``bench.netem_tun`` (a userspace delay line on a TUN that
policy routing puts between every pair of veths). This kernel has no ``sch_netem``, so only
the TUN path is exercised here; the netem branch is minimal and untested (there, traffic
from the host to a side is delayed too). A profile without delay, jitter or loss forwards
directly. A control veth joins the host's namespace to the router (``control=True``): the
benchmark process reaches every side's address without the delay line, to start nodes and
poll status (it does cross the side's veth, its tbf and its byte counters: keep it small).

Names come from our PID, and ``close`` removes exactly what was created (the delay-line
process by PID, then the namespaces, which take their veths and tables with them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["LinkProfile", "Wan", "kernel_netem", "skip_reason"]

_counter = itertools.count()
_SIDE = re.compile(r"[a-z0-9]{1,8}$")
_SIDE_IF = "wan0"
_TUN = "wantun"
_TABLE = 100  # the router's table for packets from the sides: everything into the TUN
_NETEM = Path(__file__).with_name("netem_tun.py")
# Forward; no reverse-path check (packets from the TUN carry other subnets' sources).
_ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
)


@dataclass(frozen=True)
class LinkProfile:
    rtt_ms: float = 0.0  # round trip added between two sides (half each way)
    jitter_ms: float = 0.0  # uniform +- half of it each way (the round trip +-it), FIFO
    rate_mbit: float = 0.0  # 0: unlimited; else tbf on both ends of every side's veth
    loss_pct: float = 0.0  # random loss on each crossing (each direction)

    @property
    def delayed(self) -> bool:
        return bool(self.rtt_ms or self.jitter_ms or self.loss_pct)


def _run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Wan:
    """``with Wan(["a", "b"], LinkProfile(rtt_ms=40, rate_mbit=50)) as wan: ...``"""

    def __init__(
        self,
        sides: Sequence[str],
        profile: LinkProfile | None = None,
        netem: str = "auto",
        control: bool = True,
    ) -> None:
        if len(set(sides)) != len(sides) or not 1 <= len(sides) <= 62:
            raise ValueError(f"sides must be 1..62 distinct names: {sides}")
        for s in sides:
            if not _SIDE.match(s):
                raise ValueError(f"side name {s!r}: 1-8 of [a-z0-9]")
        if netem not in ("auto", "tun", "kernel"):
            raise ValueError(f"netem {netem!r}: auto, tun or kernel")
        self.sides = list(sides)
        self.profile = profile or LinkProfile()
        self._netem_choice = netem
        self._control = control
        tag = f"{os.getpid() % 100000}x{next(_counter)}"
        self.router = f"kwr{tag}"
        self._host_if = f"kwc{tag}"[:15]
        self.host_address = ""  # this (the host's) namespace's address on the control veth
        self._ns = {s: f"kw{tag}_{s}" for s in self.sides}
        self._ip: dict[str, str] = {}
        self._router_ip: dict[str, str] = {}
        self._created: list[str] = []
        self._line: subprocess.Popen[str] | None = None
        self._cut: set[str] = set()
        self._host_link = False
        self.mode = "direct"  # "direct", "tun" or "kernel": how the delay is added
        self.line_stats: dict[str, float] = {}  # the delay line's counters, after close

    # -- public API -------------------------------------------------------------------------

    def exec_prefix(self, side: str) -> list[str]:
        """Prefix a command with this to run it in ``side`` (``ip netns exec`` execs it)."""
        return ["ip", "netns", "exec", self._ns[side]]

    @property
    def line_pid(self) -> int | None:
        """The TUN delay line's PID while it runs (``mode == "tun"``), else None."""
        return self._line.pid if self._line is not None else None

    def router_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.router]

    def address(self, side: str) -> str:
        """The side's IP, reachable from every other side through the router."""
        return self._ip[side]

    def tx_bytes(self, side: str) -> int:
        """Bytes ``side`` has sent onto its link (its veth's counter: what crossed the wire)."""
        return self._counter(side, "tx")

    def rx_bytes(self, side: str) -> int:
        return self._counter(side, "rx")

    def cut(self, side: str) -> None:
        """Drop everything to and from ``side`` at the router (a partition) until ``heal``."""
        self._cut.add(side)
        self._apply_cuts()

    def heal(self, side: str | None = None) -> None:
        if side is None:
            self._cut.clear()
        else:
            self._cut.discard(side)
        self._apply_cuts()

    # -- building ---------------------------------------------------------------------------

    def __enter__(self) -> Wan:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        base = _free_slash24()
        r = self.router
        self._netns_add(r)
        _run("ip", "netns", "exec", r, "sysctl", "-qw", *_ROUTER_SYSCTLS)
        _run("ip", "-n", r, "link", "set", "lo", "up")
        if self.profile.delayed:
            self.mode = self._delay_mode()
        for i, side in enumerate(self.sides):
            self._add_side(side, f"{base}{4 * i + 1}", f"{base}{4 * i + 2}")
        if self._control:
            self._add_control(base)
        if self.mode == "tun":
            self._start_line()

    def _add_control(self, base: str) -> None:
        """A veth from the host's namespace to the router (the last /30), and a route to the
        sides: the benchmark process reaches every side directly, not through the delay line
        (its traffic still crosses the side's veth and tbf, so it should stay small)."""
        r, host_if = self.router, self._host_if
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "ctl", "netns", r)
        self._host_link = True
        self.host_address = f"{base}253"
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", host_if)
        _run("ip", "-n", r, "addr", "add", f"{base}254/30", "dev", "ctl")
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", r, "link", "set", "ctl", "up")
        _run("ip", "route", "add", f"{base}0/24", "via", f"{base}254", "dev", host_if)
        if self.mode == "tun":  # replies to the host skip the TUN
            _run("ip", "-n", r, "rule", "add", "to", self.host_address, "lookup", "main",
                 "pref", "50")  # fmt: skip

    def _netns_add(self, name: str) -> None:
        """A namespace without IPv6 (no router solicitations in the byte counters)."""
        _run("ip", "netns", "add", name)
        self._created.append(name)
        _run(
            "ip",
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )

    def _delay_mode(self) -> str:
        if self._netem_choice != "auto":
            return self._netem_choice
        return "kernel" if kernel_netem(self.router) else "tun"

    def _add_side(self, side: str, router_ip: str, ip: str) -> None:
        r, ns, rif = self.router, self._ns[side], f"v{side}"
        self._netns_add(ns)
        self._ip[side], self._router_ip[side] = ip, router_ip
        _run(
            "ip", "-n", r, "link", "add", rif, "type", "veth", "peer", "name", _SIDE_IF, "netns", ns
        )
        _run("ip", "-n", r, "addr", "add", f"{router_ip}/30", "dev", rif)
        _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", _SIDE_IF)
        for n, dev in ((r, rif), (ns, _SIDE_IF), (ns, "lo")):
            _run("ip", "-n", n, "link", "set", dev, "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", router_ip)
        p = self.profile
        parent = ["root"]
        if self.mode == "kernel":
            netem = ["netem", "delay", f"{p.rtt_ms / 2}ms"]
            netem += [f"{p.jitter_ms / 2}ms"] if p.jitter_ms else []
            netem += ["loss", f"{p.loss_pct}%"] if p.loss_pct else []
            _run("tc", "-n", r, "qdisc", "add", "dev", rif, "root", "handle", "1:", *netem)
            parent = ["parent", "1:"]
        if p.rate_mbit:
            _run("tc", "-n", r, "qdisc", "add", "dev", rif, *parent, *self._tbf())
            _run("tc", "-n", ns, "qdisc", "add", "dev", _SIDE_IF, "root", *self._tbf())
        if self.mode == "tun":
            _run("ip", "-n", r, "rule", "add", "iif", rif, "lookup", str(_TABLE), "pref", "100")

    def _tbf(self) -> list[str]:
        """A token bucket at the profile's rate; its queue holds a round trip's worth (or
        50 ms, whichever is more), roughly what a WAN router buffers."""
        rate = self.profile.rate_mbit * 1e6 / 8
        burst = max(16000, int(rate * 0.004))
        limit = int(rate * max(0.05, self.profile.rtt_ms / 1e3)) + burst
        return [
            "tbf",
            "rate",
            f"{self.profile.rate_mbit}mbit",
            "burst",
            str(burst),
            "limit",
            str(limit),
        ]

    def _start_line(self) -> None:
        r, p = self.router, self.profile
        _run("ip", "-n", r, "tuntap", "add", "dev", _TUN, "mode", "tun")
        argv = [
            *self.router_prefix(),
            sys.executable,
            str(_NETEM),
            "--dev",
            _TUN,
            "--delay-ms",
            str(p.rtt_ms / 2),
            "--jitter-ms",
            str(p.jitter_ms / 2),
            "--loss-pct",
            str(p.loss_pct),
        ]
        self._line = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._line.stdout is not None
        ready, _, _ = select.select([self._line.stdout], [], [], 10)
        if not ready or self._line.stdout.readline().strip() != "ready":
            raise RuntimeError(f"delay line did not start: {self._end_line()}")
        with contextlib.suppress(OSError):  # it stands in for the network: let it run first
            os.setpriority(os.PRIO_PROCESS, self._line.pid, -10)
        _run("ip", "-n", r, "link", "set", _TUN, "up", "txqueuelen", "10000")
        _run("ip", "-n", r, "route", "add", "default", "dev", _TUN, "table", str(_TABLE))

    # -- counters and cuts ------------------------------------------------------------------

    def _counter(self, side: str, way: str) -> int:
        out = _run("ip", "-n", self._ns[side], "-s", "-j", "link", "show", "dev", _SIDE_IF)
        return int(json.loads(out)[0]["stats64"][way]["bytes"])

    def _apply_cuts(self) -> None:
        r = self.router
        _run("ip", "netns", "exec", r, "nft", "delete", "table", "inet", "kvwan", check=False)
        if not self._cut:
            return
        rules = "".join(f'iifname "v{s}" drop; oifname "v{s}" drop; ' for s in sorted(self._cut))
        script = (
            "table inet kvwan { chain forward { type filter hook forward priority 0; "
            f"policy accept; {rules}}}\n}}\n"
        )
        proc = subprocess.run(
            [*self.router_prefix(), "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=20,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft: {proc.stderr.strip()}")

    # -- teardown ---------------------------------------------------------------------------

    def _end_line(self) -> str:
        """SIGTERM the delay line by PID (SIGKILL after 5 s); returns what it printed."""
        line, self._line = self._line, None
        if line is None:
            return ""
        if line.poll() is None:
            os.kill(line.pid, signal.SIGTERM)
        try:
            out, err = line.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(line.pid, signal.SIGKILL)
            out, err = line.communicate()
        last = out.strip().splitlines()[-1:] if out else []
        if last and last[0].startswith("{"):
            self.line_stats = json.loads(last[0])
        return err.strip()[-1000:]

    def close(self) -> None:
        self._end_line()
        if self._host_link:  # its route goes with it
            self._host_link = False
            _run("ip", "link", "del", self._host_if, check=False)
        while self._created:
            _run("ip", "netns", "del", self._created.pop(), check=False)


def _free_slash24() -> str:
    """``10.a.b.`` of a /24 that no host address or route uses now."""
    used = _run("ip", "-4", "-o", "addr") + _run("ip", "-4", "route", "show", "table", "all")
    rng = random.Random()
    for _ in range(200):
        prefix = f"10.{rng.randrange(100, 200)}.{rng.randrange(256)}."
        if prefix not in used:
            return prefix
    raise RuntimeError("no free 10.x /24 for the WAN namespaces")


def kernel_netem(netns: str) -> bool:
    """Whether this kernel has sch_netem: try it on ``netns``'s loopback and take it off."""
    tried = subprocess.run(
        ["tc", "-n", netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        capture_output=True,
        timeout=20,
    )
    if tried.returncode != 0:
        return False
    _run("tc", "-n", netns, "qdisc", "del", "dev", "lo", "root", check=False)
    return True


@cache
def skip_reason() -> str | None:
    """None when a delayed two-side WAN can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root for network namespaces, tc and a TUN device"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed (apt-get install iproute2 nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun for the userspace delay line"
    try:
        t0 = time.monotonic()
        with Wan(["a", "b"], LinkProfile(rtt_ms=1, rate_mbit=10)):
            pass
        if time.monotonic() - t0 > 30:
            return "building a WAN took over 30 s"
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"namespaces, tbf or the TUN delay line unavailable: {exc}"
    return None
