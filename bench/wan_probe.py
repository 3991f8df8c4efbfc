"""What a ``bench.wan_net`` link really does: TCP round trips and bulk transfer time.

A check of the WAN profile, not of kevo: a tiny TCP server runs in one side, a client in
another (both through ``Wan.exec_prefix``), and the client reports JSON: the round trips of
1-byte ping-pongs, or the seconds to push N bytes and get the server's 1-byte receipt.

``python -m bench.wan_probe serve --bind IP --port P`` answers each connection: a first
byte ``p`` starts ping-pong (echo every byte), ``b`` + 8-byte length starts a bulk sink.
``python -m bench.wan_probe ping --to IP:P --count N`` and ``bulk --to IP:P --bytes N``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["measure_bulk", "measure_rtt", "probe_server"]

_CHUNK = 1 << 16
_ROOT = Path(__file__).resolve().parent.parent  # so ``-m bench.wan_probe`` imports anywhere


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = conn.recv(1)
        if kind == b"p":
            while data := conn.recv(1024):
                conn.sendall(data)
        elif kind == b"b":
            (left,) = struct.unpack("!Q", _recv_exact(conn, 8))
            while left > 0:
                data = conn.recv(min(_CHUNK, left))
                if not data:
                    return
                left -= len(data)
            conn.sendall(b"k")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            raise ConnectionError("peer closed")
        buf += data
    return buf


def serve(bind: str, port: int) -> None:
    with socket.create_server((bind, port), backlog=16) as srv:
        print("ready", flush=True)
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def ping(host: str, port: int, count: int, timeout: float) -> list[float]:
    """Round trips in ms of ``count`` 1-byte ping-pongs on one connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"p")
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            s.sendall(b"x")
            _recv_exact(s, 1)
            rtts.append((time.perf_counter() - t0) * 1e3)
        return rtts


def bulk(host: str, port: int, nbytes: int, timeout: float) -> float:
    """Seconds from connect to the receipt of ``nbytes`` sent (handshake included)."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"b" + struct.pack("!Q", nbytes))
        chunk = b"\0" * _CHUNK
        left = nbytes
        while left > 0:
            s.sendall(chunk[: min(_CHUNK, left)])
            left -= _CHUNK
        _recv_exact(s, 1)
    return time.perf_counter() - t0


# -- from the benchmark or a test: run the two ends inside the WAN's sides ------------------


@contextmanager
def probe_server(prefix: list[str], bind: str, port: int) -> Iterator[None]:
    """A probe server under ``prefix`` (e.g. ``wan.exec_prefix("b")``), ended by PID."""
    argv = [*prefix, sys.executable, "-m", "bench.wan_probe", "serve", "--bind", bind]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=_ROOT
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("probe server did not start")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(prefix: list[str], *args: str, timeout: float) -> object:
    """Run a client; it gives up after ``timeout`` s of silence (``CalledProcessError``)."""
    argv = [*prefix, sys.executable, "-m", "bench.wan_probe", *args, "--timeout", str(timeout)]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 30, check=True, cwd=_ROOT
    )
    return json.loads(out.stdout)


def measure_rtt(prefix: list[str], to: str, count: int = 20, timeout: float = 10) -> list[float]:
    """Round trips (ms) from a client under ``prefix`` to a probe server at ``to``."""
    out = _client(prefix, "ping", "--to", to, "--count", str(count), timeout=timeout)
    assert isinstance(out, list)
    return [float(x) for x in out]


def measure_bulk(prefix: list[str], to: str, nbytes: int, timeout: float = 30) -> float:
    out = _client(prefix, "bulk", "--to", to, "--bytes", str(nbytes), timeout=timeout)
    assert isinstance(out, float)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wan_probe", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    for name in ("ping", "bulk"):
        c = sub.add_parser(name)
        c.add_argument("--to", required=True, help="HOST:PORT")
        c.add_argument("--count", type=int, default=20)
        c.add_argument("--bytes", type=int, default=1 << 20)
        c.add_argument("--timeout", type=float, default=10)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.bind, a.port)
        return 0
    host, port = a.to.rsplit(":", 1)
    if a.cmd == "ping":
        print(json.dumps(ping(host, int(port), a.count, a.timeout)))
    else:
        print(json.dumps(bulk(host, int(port), a.bytes, a.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
