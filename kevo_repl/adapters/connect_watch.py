"""Why a node did not answer: the client's socket monitor, read when a request times out.

ZeroMQ hides connection failures (it retries in the background), so "no answer within T ms"
covered a refused TCP connection, a port that does not speak ZeroMQ, a CURVE node addressed
without keys (or with the wrong server key), a key the node refused, and a node that
accepted the handshake but stayed silent. The monitor's events tell them apart:

==============================================  =========================================
events seen                                     cause
==============================================  =========================================
``HANDSHAKE_FAILED_AUTH``                       the node's ZAP refused our key
``HANDSHAKE_FAILED_PROTOCOL`` (mechanism)       CURVE on one side only
``HANDSHAKE_FAILED_NO_DETAIL``, no CURVE here   the same: a CURVE node closed on our NULL
``HANDSHAKE_FAILED_NO_DETAIL`` (we use CURVE)   the server key we were given is not its key
``CONNECTED`` and no handshake                  the port does not speak ZeroMQ (HTTP?)
``CONNECT_RETRIED``, never ``CONNECTED``        nothing listens: connection refused
``HANDSHAKE_SUCCEEDED``                         connected; the node itself did not answer
==============================================  =========================================
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass

import zmq

from kevo_repl.core.errors import KevoError

__all__ = ["ConnectWatch", "UnresolvableHostError", "resolve"]

_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


_EVENT_FRAME = struct.Struct("=HI")  # libzmq's monitor event: id (uint16), value (uint32)


def _monitor_event(monitor: zmq.Socket[bytes]) -> tuple[int, int]:
    """(event, value) of one monitor message (``zmq.utils.monitor`` would import asyncio)."""
    frames = monitor.recv_multipart()
    return _EVENT_FRAME.unpack_from(frames[0])


class UnresolvableHostError(KevoError):
    """The node's host name does not resolve (checked before connecting)."""


def resolve(host: str, port: int) -> None:
    """Raise ``UnresolvableHostError`` naming the host unless it resolves."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UnresolvableHostError(f"cannot resolve host {host!r}: {reason}") from exc


@dataclass(slots=True)
class _Seen:
    connected: bool = False
    retried: bool = False
    handshake_ok: bool = False
    auth_status: int = 0
    mechanism_mismatch: bool = False
    protocol_error: int = 0
    no_detail: bool = False


class ConnectWatch:
    """The monitor of one DEALER; ``explain`` turns what it saw into a sentence."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, curve: bool) -> None:
        self._monitor = sock.get_monitor_socket(_EVENTS)
        self._sock = sock
        self._endpoint = endpoint
        self._curve = curve
        self._seen = _Seen()

    def _drain(self) -> _Seen:
        s = self._seen
        while self._monitor.poll(0):
            kind, value = _monitor_event(self._monitor)
            if kind == zmq.EVENT_CONNECTED:
                s.connected = True
            elif kind == zmq.EVENT_CONNECT_RETRIED:
                s.retried = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                s.handshake_ok = True
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                s.auth_status = value
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                s.mechanism_mismatch |= value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                s.protocol_error = value
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                s.no_detail = True
        return s

    def explain(self, node: str, waited_ms: int) -> str:
        """Why ``node`` gave no answer within ``waited_ms``, as far as the monitor knows."""
        return self.diagnose(node, waited_ms)[1]

    def diagnose(self, node: str, waited_ms: int) -> tuple[str, str]:
        """``(cause, sentence)``: a few words for a status line, and the whole story."""
        s = self._drain()
        where = f"{node} (requests go to {self._endpoint})"
        if s.auth_status:
            return "our CURVE key was refused", (
                f"{where} refused our CURVE key (ZAP status {s.auth_status}): it is not in the "
                "node's authorized_keys, or was revoked there"
            )
        if s.mechanism_mismatch or (s.no_detail and not self._curve):
            if self._curve:
                return "it does not use CURVE", (
                    f"{where} does not use CURVE, but we were given keys: drop --keys"
                )
            return "it requires CURVE", (
                f"{where} requires CURVE: pass --keys DIR holding this client's key pair "
                "(--key-name NAME) and the node's public key (--server-key, default "
                "DIR/primary.key)"
            )
        if s.no_detail:
            return "wrong server key", (
                f"{where} failed the CURVE handshake: the server key we were given is not "
                "this node's public key (check --server-key)"
            )
        if s.protocol_error or (s.connected and not s.handshake_ok):
            return "not a ZeroMQ port", (
                f"{where} accepted the TCP connection but does not speak ZeroMQ: is it a "
                "kevo-repl node's port (not its --metrics-port, nor its request port P+1)?"
            )
        if s.retried and not s.connected:
            return "connection refused", (
                f"connection refused by {self._endpoint}: nothing listens there. Is the node "
                f"running, and is {node} the --port it was started with (requests go to P+1)?"
            )
        if s.handshake_ok:
            return "connected, no answer", (
                f"{where} is connected but sent no answer within {waited_ms} ms (busy, stalled?)"
            )
        return "no answer", f"no answer from {where} within {waited_ms} ms (is it running?)"

    def reset(self) -> None:
        """Forget what was seen (the socket was replaced)."""
        self._seen = _Seen()

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(0)
