"""What a node sends, and where a probe runs: TCP bytes per connection (``ss``), and joining a
network namespace from Python (listener processes must sit beside the node they time).

Why ``ss``: a PUB socket sends each record once per subscriber, so a node's own counters
(``kevo_bytes_published_total``) say what it published, not what it sent. The kernel's
``bytes_sent`` per TCP connection says the latter, payload only (a veth counter, where there
is one, adds the headers and ACKs); counting only the connections whose other end is a
follower leaves out the lag listener and the writer.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Callable, Sequence

__all__ = ["Conn", "join_netns", "sent_delta", "tcp_sent"]

CLONE_NEWNET = 0x40000000
_LINE = re.compile(r"^\S+\s+\S+\s+(\S+)\s+(\S+)\s")
_PID = re.compile(r"pid=(\d+)")
_SENT = re.compile(r"\bbytes_sent:(\d+)")
_MAPPED = re.compile(r"^\[(?:::ffff:)?([^\]]+)\]")

Conn = tuple[str, str]  # (local endpoint, peer endpoint), as ``ss`` prints them


def join_netns(name: str) -> None:
    """Move the calling thread into the named namespace (``ip netns add`` made it): call it
    first thing in a fresh process, before any socket or thread exists (they would stay)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _established(prefix: Sequence[str] = ()) -> list[tuple[Conn, int, int]]:
    """Every established TCP connection here: ((local, peer), owner PID or 0, bytes sent)."""
    argv = [*prefix, "ss", "-tinpHO", "state", "established"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    rows = []
    for line in out.splitlines():
        m, sent = _LINE.match(line), _SENT.search(line)
        if m is None:
            continue
        pid = _PID.search(line)
        conn = (_plain(m[1]), _plain(m[2]))
        rows.append((conn, int(pid[1]) if pid else 0, int(sent[1]) if sent else 0))
    return rows


def _plain(endpoint: str) -> str:
    """``[::ffff:127.0.0.1]:5`` (a dual-stack socket, as ZeroMQ opens them) as ``127.0.0.1:5``."""
    return _MAPPED.sub(r"\1", endpoint)


def tcp_sent(
    pid: int, keep: Callable[[str, int], bool], prefix: Sequence[str] = ()
) -> dict[Conn, int]:
    """Bytes sent so far on each connection of process ``pid`` that ``keep(peer, peer_pid)``
    keeps; ``peer_pid`` is the process at the other end when it is in this namespace (on
    loopback both ends of a connection are listed), else 0."""
    rows = _established(prefix)
    owner = {conn[0]: p for conn, p, _ in rows if p}
    return {
        conn: sent for conn, p, sent in rows if p == pid and keep(conn[1], owner.get(conn[1], 0))
    }


def sent_delta(before: dict[Conn, int], after: dict[Conn, int]) -> int:
    """Bytes sent between two ``tcp_sent`` readings on the connections alive at the second
    (one opened in between counts from zero; one closed in between is not seen)."""
    return sum(n - before.get(conn, 0) for conn, n in after.items())
