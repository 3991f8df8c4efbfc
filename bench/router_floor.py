"""The floor of single writes at D = 1: a Python ROUTER that answers and does nothing else.

The same load generator as ``bench throughput`` (50 logical clients over 2 DEALERs, one
``PutRequest`` in flight each) against a process that receives each request, parses it
with protobuf and answers it with a write reply: no validation, WAL, fdatasync, store,
publish or follower. ``coalesce`` answers each drain's requests of one connection with one
``WriteReplies`` frame, as the primary answers a group. So this is what Python and pyzmq
alone allow on this machine for the request/reply half of kevo's write path.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Any

import zmq

from bench.loadgen import run_load
from bench.report import percentile
from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb
from kevo_repl.wire.envelope import encode_write_replies, encode_write_reply

__all__ = ["run_router_floor"]


def _serve(port: int, coalesce: bool, ready: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    router.setsockopt(zmq.RCVHWM, 0)
    router.bind(f"tcp://127.0.0.1:{port + 1}")
    ready.set()
    lsn = 0
    while not stop.is_set():
        if not router.poll(100, zmq.POLLIN):
            continue
        answers: dict[bytes, list[tuple[int, int, int, int]]] = {}
        for _ in range(1000):
            try:
                peer = router.recv(zmq.DONTWAIT)
            except zmq.Again:
                break
            rid = pb.Request.FromString(router.recv()).request_id
            lsn += 1
            if coalesce:
                answers.setdefault(peer, []).append((rid, lsn, lsn, 0))
            else:
                router.send(peer, zmq.SNDMORE)
                router.send(encode_write_reply(rid, lsn, lsn))
        for peer, batch in answers.items():
            router.send(peer, zmq.SNDMORE)
            router.send(
                encode_write_replies(batch) if len(batch) > 1 else encode_write_reply(*batch[0])
            )
    ctx.destroy(0)


def run_router_floor(coalesce: bool, clients: int = 50, entries: int = 200_000) -> dict[str, Any]:
    """One row: single writes/s against the do-nothing ROUTER."""
    spawn = mp.get_context("spawn")
    port = free_port_pair()
    ready, stop = spawn.Event(), spawn.Event()
    server = spawn.Process(target=_serve, args=(port, coalesce, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the do-nothing ROUTER did not start")
        load = run_load(f"127.0.0.1:{port}", clients=clients, depth=1, entries=entries)
    finally:
        stop.set()
        server.join(5)
        if server.is_alive():
            server.kill()
            server.join()
    return {
        "system": "do-nothing ROUTER (pyzmq)" + (", coalesced replies" if coalesce else ""),
        "clients": clients,
        "pipeline": 1,
        "writes_per_s": round(load.entries / load.seconds),
        "latency_p50_ms": round(percentile(load.latency_ms, 0.5), 3),
    }


if __name__ == "__main__":
    import json

    for coalesce in (False, True):
        print(json.dumps(run_router_floor(coalesce)))
