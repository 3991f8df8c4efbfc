"""The floor of one relay hop's lag: a relay that does nothing but receive and re-send.

Measured exactly as ``bench lag`` measures a replica (a listener timestamps each frame on
``CLOCK_MONOTONIC`` as the source announces it and as the relay announces it; lag = relay
time - source time), at a paced open-loop rate, over the same transport (PUB -> SUB on the
relay -> PUB -> SUB, each hop through libzmq's I/O threads), with no parsing, WAL, store or
ack on the relay. kevo's replica lag minus this row is what the replica's own work costs.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import struct
import time
from typing import Any

import zmq

from bench.report import lag_summary
from kevo_repl.testing.ports import free_port

__all__ = ["run_relay_floor"]

_FRAME = struct.Struct(">Q")  # a sequence number, padded to a record's size
_PAD = b"r" * 180
_END = 0xFFFFFFFFFFFFFFFF


def _source(ports: tuple[int, int], rate: int, seconds: float, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{ports[0]}")
    ready.wait(30)
    time.sleep(0.5)  # subscriptions propagate
    send = pub.send
    count = int(rate * seconds)
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        while time.perf_counter() < due:
            pass
        send(_FRAME.pack(i) + _PAD)
    for _ in range(20):
        send(_FRAME.pack(_END) + _PAD)
        time.sleep(0.01)
    ctx.destroy(0)


def _relay(ports: tuple[int, int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{ports[0]}")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{ports[1]}")
    while True:
        frame = sub.recv()
        pub.send(frame)
        if frame[:8] == _FRAME.pack(_END):
            time.sleep(0.3)
            break
    ctx.destroy(0)


def _listen(ports: tuple[int, int], ready: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: list[dict[int, float]] = [{}, {}]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    subs = []
    for port in ports:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(f"tcp://127.0.0.1:{port}")
        subs.append(s)
    ready.set()
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)
    ended = [False, False]
    while not all(ended):
        events = poller.poll(5000)
        if not events:
            break
        for s, _ in events:
            now = time.monotonic()
            (seq,) = _FRAME.unpack(s.recv()[:8])
            if seq == _END:
                ended[subs.index(s)] = True
            else:
                seen[subs.index(s)].setdefault(seq, now)
    lags = sorted((seen[1][seq] - t) * 1000 for seq, t in seen[0].items() if seq in seen[1])
    out.put((len(seen[0]), lags))
    ctx.destroy(0)


def run_relay_floor(rate: int = 5000, seconds: float = 10.0) -> dict[str, Any]:
    """One row: the lag a do-nothing pyzmq relay adds at ``rate`` frames/s."""
    spawn = mp.get_context("spawn")
    ports = (free_port(), free_port())
    ready, out = spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(target=_relay, args=(ports,), daemon=True),
        spawn.Process(target=_listen, args=(ports, ready, out), daemon=True),
        spawn.Process(target=_source, args=(ports, rate, seconds, ready), daemon=True),
    ]
    try:
        for p in procs:
            p.start()
            time.sleep(0.2)
        sent, lags = out.get(timeout=seconds + 60)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return {
        "system": "do-nothing relay (pyzmq)",
        "rate": rate,
        "achieved_rate": round(sent / seconds),
        "sent_seen": sent,
        **lag_summary(lags),
    }


if __name__ == "__main__":
    import json
    import sys

    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    print(json.dumps(run_relay_floor(rate)))
