"""A userspace netem: a delay line on a TUN device, for kernels without ``sch_netem``.

Run inside the router namespace of ``bench.wan_net``: the kernel routes every packet that
crosses the router into the TUN; this process reads it, holds it for the one-way delay
(plus uniform jitter, never reordering: a packet leaves no earlier than the one before it,
as TCP over a real path mostly sees; plus random loss) and writes it back, and policy routing
sends what comes out of the TUN on to its destination's veth. One process serves every
direction: each crossing passes the line once, so a round trip between two sides pays the
delay twice.

Why FIFO makes a deque enough: release times never decrease, so the oldest packet is always
the next due. ``select`` (microsecond timeouts, unlike ``poll``'s milliseconds) sleeps until
it is due or a packet arrives.

``python -m bench.netem_tun --dev TUN --delay-ms D [--jitter-ms J] [--loss-pct L]`` prints
``ready`` once attached, runs until SIGTERM/SIGINT, then prints its counters as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

__all__ = ["DelayLine", "LineStats", "open_tun"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_MAX_PACKET = 65536
_READ_BATCH = 256  # packets read per wake-up before the due ones are written


def open_tun(name: str) -> int:
    """Attach to TUN ``name`` (created with ``ip tuntap add``), non-blocking, raw IP."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class LineStats:
    packets: int = 0
    bytes: int = 0
    lost: int = 0  # dropped by --loss-pct
    overflow: int = 0  # dropped because the line held --limit packets
    max_queue: int = 0
    late_us_max: float = 0.0  # worst lateness of a release against its due time
    late_us_sum: float = 0.0


class DelayLine:
    """Holds packets read from ``fd`` for ``delay_s`` (+ jitter), then writes them back."""

    def __init__(
        self,
        fd: int,
        delay_s: float,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        limit: int = 20000,
        seed: int | None = None,
    ) -> None:
        self.fd = fd
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.limit = limit
        self.stats = LineStats()
        self._rng = random.Random(seed)
        self._queue: deque[tuple[float, bytes]] = deque()
        self._last_release = 0.0

    def run(self) -> None:
        """Forever; a signal handler that raises ends it (``select`` retries otherwise)."""
        fd, queue, clock = self.fd, self._queue, time.monotonic
        while True:
            timeout = max(0.0, queue[0][0] - clock()) if queue else 1.0
            readable, _, _ = select.select([fd], [], [], timeout)
            if readable:
                self._read_all()
            self._release(clock())

    def _read_all(self) -> None:
        fd, queue, stats, rng = self.fd, self._queue, self.stats, self._rng
        now = time.monotonic()
        for _ in range(_READ_BATCH):
            try:
                packet = os.read(fd, _MAX_PACKET)
            except BlockingIOError:
                break
            if self.loss and rng.random() < self.loss:
                stats.lost += 1
                continue
            if len(queue) >= self.limit:
                stats.overflow += 1
                continue
            due = now + self.delay_s
            if self.jitter_s:
                due += rng.uniform(-self.jitter_s, self.jitter_s)
            due = max(due, self._last_release, now)
            self._last_release = due
            queue.append((due, packet))
        stats.max_queue = max(stats.max_queue, len(queue))

    def _release(self, now: float) -> None:
        fd, queue, stats = self.fd, self._queue, self.stats
        while queue and queue[0][0] <= now:
            due, packet = queue.popleft()
            try:
                os.write(fd, packet)
            except OSError:
                continue  # e.g. no route any more while tearing down
            late = (now - due) * 1e6
            stats.packets += 1
            stats.bytes += len(packet)
            stats.late_us_sum += late
            stats.late_us_max = max(stats.late_us_max, late)


class _Stop(Exception):
    pass


def _stop(*_: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netem_tun", description=__doc__)
    p.add_argument("--dev", required=True, help="TUN device name (already created)")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +-, FIFO kept")
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--limit", type=int, default=20000, help="packets held at most")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    fd = open_tun(a.dev)
    line = DelayLine(
        fd, a.delay_ms / 1e3, a.jitter_ms / 1e3, a.loss_pct / 100, a.limit, seed=a.seed
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("ready", flush=True)
    try:
        line.run()
    except _Stop:
        pass
    finally:
        os.close(fd)
    print(json.dumps(asdict(line.stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
