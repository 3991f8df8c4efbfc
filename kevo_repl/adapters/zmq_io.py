"""ZeroMQ socket set-up and non-blocking send/receive, with our error vocabulary.

Every socket gets LINGER 0 (closing never hangs), explicit high-water marks and, for sockets
that face peers, MAXMSGSIZE so one oversized frame is dropped by libzmq before Python sees it.
MAXMSGSIZE checks single frames only, so receivers also cap the frame count themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import zmq

from kevo_repl.core.errors import TransportError

__all__ = [
    "SocketOptions",
    "bind_socket",
    "connect_socket",
    "endpoint",
    "recv_frames_nowait",
    "recv_frames_with_user_nowait",
    "send_nowait",
]


@dataclass(frozen=True, slots=True)
class SocketOptions:
    sndhwm: int = 10_000
    rcvhwm: int = 10_000
    max_msg_bytes: int = 64 * 1024 * 1024
    router_mandatory: bool = True
    tcp_keepalive: bool = True


def endpoint(host: str, port: int) -> str:
    """A tcp endpoint; IPv6 literals get brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _configure(sock: zmq.Socket[bytes], kind: int, opts: SocketOptions) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, opts.sndhwm)
    sock.setsockopt(zmq.RCVHWM, opts.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_bytes)
    if opts.tcp_keepalive:
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    if kind == zmq.ROUTER and opts.router_mandatory:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if kind in (zmq.DEALER, zmq.ROUTER, zmq.SUB):
        sock.setsockopt(zmq.IPV6, 1)


Prepare = Callable[["zmq.Socket[bytes]"], None]


def bind_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    host: str,
    port: int,
    opts: SocketOptions,
    prepare: Prepare | None = None,
) -> zmq.Socket[bytes]:
    """A bound socket; ``prepare`` (e.g. CURVE server keys) runs before bind."""
    return _open(ctx, kind, opts, prepare, "bind", endpoint(host, port))


def connect_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    host: str,
    port: int,
    opts: SocketOptions,
    prepare: Prepare | None = None,
) -> zmq.Socket[bytes]:
    """A connecting socket; ``prepare`` (e.g. CURVE client keys) runs before connect."""
    return _open(ctx, kind, opts, prepare, "connect", endpoint(host, port))


def _open(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    opts: SocketOptions,
    prepare: Prepare | None,
    verb: str,
    where: str,
) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    _configure(sock, kind, opts)
    if prepare is not None:
        prepare(sock)
    if verb == "connect":
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    try:
        sock.bind(where) if verb == "bind" else sock.connect(where)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise TransportError(f"cannot {verb} {where}: {exc}") from exc
    return sock


def send_nowait(sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
    """Send without blocking; False when the peer is gone or its queue is full.

    A ROUTER with ROUTER_MANDATORY raises EHOSTUNREACH for a vanished peer and EAGAIN at the
    high-water mark: both mean "this peer cannot take it now", never a reason to stop.
    """
    try:
        last = len(frames) - 1
        for i, frame in enumerate(frames):  # plain sends: cheaper than send_multipart
            flags = zmq.DONTWAIT if i == last else zmq.DONTWAIT | zmq.SNDMORE
            sock.send(frame, flags, copy=len(frame) < 65536)
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise TransportError(f"send failed: {exc}") from exc


def recv_frames_nowait(sock: zmq.Socket[bytes], max_frames: int) -> list[bytes] | None:
    """One whole message, or None when nothing is waiting.

    Messages with more than ``max_frames`` frames are consumed and returned truncated to
    ``max_frames + 1`` frames so the caller can refuse them without buffering the rest.
    """
    try:
        first = sock.recv(zmq.DONTWAIT, copy=False)  # a Frame knows if more follow: no
    except zmq.Again:  # getsockopt(RCVMORE), 0.7 us each (bench/recv_cost.py)
        return None
    frames = [first.bytes]
    more = first.more
    while more:
        part = sock.recv(copy=False)
        more = part.more
        if len(frames) <= max_frames:
            frames.append(part.bytes)
    return frames


def recv_frames_with_user_nowait(
    sock: zmq.Socket[bytes], max_frames: int
) -> tuple[list[bytes], str] | None:
    """Like ``recv_frames_nowait``, plus the ZAP ``User-Id`` (the peer's CURVE key, z85).

    libzmq attaches User-Id to each frame a peer sent; the ROUTER's own routing frame has
    none, so it is read from the last frame.
    """
    try:
        first = sock.recv(zmq.DONTWAIT, copy=False)
    except zmq.Again:
        return None
    frames = [first]
    last = first
    while last.more:
        last = sock.recv(copy=False)
        if len(frames) <= max_frames:
            frames.append(last)
    try:
        user = last.get("User-Id")
    except zmq.ZMQError:
        user = ""
    return [f.bytes for f in frames], str(user or "")
