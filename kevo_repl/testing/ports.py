"""Free loopback ports for tests and benchmarks that start real nodes.

A node binds PUB on P and ROUTER on P+1, so tests need a pair. The ports are free when
returned, not reserved, so they are taken from *below* the kernel's ephemeral range
(``ip_local_port_range``): a port the kernel hands to ``bind(0)`` is one it may also give
any outgoing connection (a replica reconnecting, a client) as its local port between our
probe and the node's bind, which CI saw as "Address already in use". Ports outside that
range are only ever taken by listeners. Within one process, a port is handed out once
(a cursor walks the range from a per-process random start), so two tests never share one.
"""

from __future__ import annotations

import os
import random
import socket
import threading

__all__ = ["free_port", "free_port_pair"]

_LOW = 10000  # well above the well-known and registered services a test box runs
_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_HIGH = _ephemeral_low() - 2  # the pair's second port stays below the range too
_cursor = random.Random(os.getpid()).randrange(_LOW, max(_LOW + 1, _HIGH))


def _bindable(*ports: int) -> bool:
    socks = [socket.socket() for _ in ports]
    try:
        for s, port in zip(socks, ports, strict=True):
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _next(width: int) -> int:
    """The next port P of the cursor such that P..P+width-1 bind right now."""
    global _cursor
    if _HIGH - _LOW < 100:  # a tiny non-ephemeral range: fall back to the kernel's pick
        return _kernel_pick(width)
    with _lock:
        for _ in range(2000):
            port = _cursor
            _cursor = port + width if port + 2 * width <= _HIGH else _LOW
            if _bindable(*range(port, port + width)):
                return port
    raise RuntimeError(f"no {width} free loopback port(s) in {_LOW}..{_HIGH}")


def _kernel_pick(width: int) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + width <= 65535 and _bindable(*range(port, port + width)):
            return port
    raise RuntimeError("no free loopback port")


def free_port() -> int:
    """A port free on 127.0.0.1 right now, outside the ephemeral range."""
    return _next(1)


def free_port_pair() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1 right now."""
    return _next(2)
