"""A raw DEALER for hostile tests: send any frames, read any answer, no client niceties."""

from __future__ import annotations

import zmq

from kevo_repl.wire import pb

__all__ = ["RawDealer", "StalledDealer", "stalled_subscriber"]


class RawDealer:
    def __init__(self, address: str, *, identity: bytes = b"") -> None:
        host, _, port = address.rpartition(":")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        if identity:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(f"tcp://{host}:{int(port) + 1}")

    def __enter__(self) -> RawDealer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def request(self, req: pb.Request) -> None:
        self.sock.send(req.SerializeToString())

    def recv(self, timeout_ms: int = 3000) -> pb.Response | None:
        """The next answer, or None if none came in time."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        resp = pb.Response()
        resp.ParseFromString(self.sock.recv())
        return resp

    def call(self, req: pb.Request, timeout_ms: int = 3000) -> pb.Response:
        self.request(req)
        while True:
            resp = self.recv(timeout_ms)
            if resp is None:
                raise AssertionError(f"no answer to {req.WhichOneof('body')} in {timeout_ms} ms")
            if resp.request_id == req.request_id:
                return resp

    def drain(self) -> list[pb.Response]:
        """Every answer already waiting (non-blocking)."""
        out: list[pb.Response] = []
        while True:
            try:
                raw = self.sock.recv(zmq.DONTWAIT)
            except zmq.Again:
                return out
            resp = pb.Response()
            resp.ParseFromString(raw)
            out.append(resp)


class StalledDealer(RawDealer):
    """A DEALER that takes one message and then nothing: the node's queue to it fills."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1)
        self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.connect(f"tcp://{host}:{int(port) + 1}")


def stalled_subscriber(address: str) -> zmq.Socket[bytes]:
    """A SUB to a node's stream that takes one frame and never reads (a paused ``tail``, a
    SIGSTOPped replica): the node's PUB queue to it fills. Close it with ``close(0)``."""
    host, _, port = address.rpartition(":")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{host}:{port}")
    return sub
