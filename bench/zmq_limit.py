"""The raw pyzmq PUB->SUB limit: a tight loop between two processes over tcp loopback.

Each frame stands for one WAL record of ``batch`` entries (33 B header + 122 B per entry:
16 B key, 100 B value, protobuf tags), so entries/s is comparable with the replicated
throughput at the same batch size. The receiver only receives; nothing is parsed. High-water
marks are raised (DESIGN.md: at HWM 1000 about half were dropped) and drops are counted.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from typing import Any

import zmq

from kevo_repl.testing.ports import free_port

__all__ = ["run_zmq_limit"]

HWM = 100_000
_HELLO, _DATA, _END = b"H", b"W", b"E"


def _send(port: int, frame: bytes, frames: int, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, HWM)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    while not ready.is_set():
        pub.send(_HELLO)
        time.sleep(0.01)
    send = pub.send
    for _ in range(frames):
        send(frame)
    for _ in range(200):
        send(_END)
        time.sleep(0.005)
    pub.close(0)
    ctx.term()


def _recv(port: int, ready: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, HWM)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    recv = sub.recv
    while recv()[:1] != _HELLO:
        pass
    ready.set()
    frame = recv()
    while frame[:1] == _HELLO:
        frame = recv()
    start = last = time.perf_counter()
    count = 0
    while frame[:1] == _DATA:
        count += 1
        last = time.perf_counter()
        frame = recv()
    out.put((count, last - start))
    sub.close(0)
    ctx.term()


def run_zmq_limit(batch: int, frames: int = 0) -> dict[str, Any]:
    """Frames of ``batch`` entries pushed as fast as one PUB can; received/s on one SUB."""
    frames = frames or max(100_000, 1_000_000 // batch)
    frame = _DATA + b"\0" * (32 + 122 * batch)
    spawn = mp.get_context("spawn")
    port = free_port()
    ready, out = spawn.Event(), spawn.Queue()
    receiver = spawn.Process(target=_recv, args=(port, ready, out), daemon=True)
    sender = spawn.Process(target=_send, args=(port, frame, frames, ready), daemon=True)
    try:
        receiver.start()
        sender.start()
        count, seconds = out.get(timeout=120)
    finally:
        for proc in (sender, receiver):
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    per_s = count / seconds if seconds > 0 else 0.0
    return {
        "system": "pyzmq-pub-sub",
        "batch": batch,
        "frame_bytes": len(frame),
        "frames_sent": frames,
        "frames_received": count,
        "frames_per_s": round(per_s),
        "entries_per_s": round(per_s * batch),
        "mb_per_s": round(per_s * len(frame) / 1e6, 1),
    }
