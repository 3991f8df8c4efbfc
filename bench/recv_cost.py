"""What one request costs a ROUTER to receive, by the way it is read and by its size.

A DEALER in another process queues N requests of a size; the ROUTER then reads them all,
timed, in one of three ways: the node's (``recv`` + ``RCVMORE`` + ``recv``, the
``recv_frames_nowait`` of ``adapters/zmq_io.py``), pyzmq's ``recv_multipart``, and two
``recv(copy=False)`` (zmq Frames instead of bytes). Sizes: a single put (60 B), a 16-entry
batch (2 KB), a large batch (64 KB).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from typing import Any

import zmq

from kevo_repl.adapters.zmq_io import recv_frames_nowait
from kevo_repl.testing.ports import free_port

__all__ = ["run_recv_cost"]

SIZES = (60, 2048, 65536)
WAYS = (
    "recv + RCVMORE + recv",
    "recv_multipart",
    "recv(copy=False) x 2",
    "recv(copy=False) + Frame.more, as bytes",
)


def _send(port: int, size: int, count: int, done: Any) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    frame = b"r" * size
    for _ in range(count):
        dealer.send(frame)
    done.wait(120)
    ctx.destroy(0)


def _read(sock: zmq.Socket[bytes], way: str) -> None:
    if way == WAYS[0]:
        recv_frames_nowait(sock, 2)
    elif way == WAYS[1]:
        sock.recv_multipart(zmq.DONTWAIT)
    elif way == WAYS[2]:
        sock.recv(zmq.DONTWAIT, copy=False)
        sock.recv(copy=False)
    else:
        first = sock.recv(zmq.DONTWAIT, copy=False)
        frames = [first.bytes]
        more = first.more
        while more:
            part = sock.recv(copy=False)
            more = part.more
            frames.append(part.bytes)


def run_recv_cost(count: int = 100_000) -> list[dict[str, Any]]:
    spawn = mp.get_context("spawn")
    rows = []
    for size in SIZES:
        n = count if size < 65536 else count // 10
        for way in WAYS:
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.RCVHWM, 0)
            port = free_port()
            router.bind(f"tcp://127.0.0.1:{port}")
            done = spawn.Event()
            sender = spawn.Process(target=_send, args=(port, size, n, done), daemon=True)
            sender.start()
            got = 0
            spent = 0.0
            while got < n:
                if not router.poll(10_000, zmq.POLLIN):
                    raise RuntimeError(f"only {got} of {n} requests arrived")
                start = time.perf_counter()
                while got < n and int(router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    _read(router, way)
                    got += 1
                spent += time.perf_counter() - start
            done.set()
            sender.join(10)
            ctx.destroy(0)
            rows.append({"bytes": size, "way": way, "us_per_request": round(spent / n * 1e6, 2)})
    return rows


if __name__ == "__main__":
    for row in run_recv_cost():
        print(json.dumps(row))
