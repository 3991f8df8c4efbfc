"""What a ``Client`` raises and returns, and the checks it makes before sending anything:
its errors, ``WriteResult`` and ``Digest``, node addresses, and the size limits."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kevo_repl.core.errors import KevoError, UnreachableError
from kevo_repl.core.ops import OP_DELETE, OP_PUT
from kevo_repl.core.text import printable
from kevo_repl.wire import pb
from kevo_repl.wire.batch import DEFAULT_LIMITS, encode_client_batch

__all__ = [
    "Digest",
    "NodeUnreachableError",
    "PipelineTimeoutError",
    "RemoteError",
    "RequestTooLargeError",
    "ValueTooLargeError",
    "WriteResult",
    "batch_request",
    "check_entry",
    "mark_retry",
    "parse_node",
]


class NodeUnreachableError(UnreachableError):
    """No answer from the node before the deadline."""


class PipelineTimeoutError(NodeUnreachableError):
    """``call_many`` timed out; says what did arrive, so the caller can tell what happened.

    ``responses[i]`` answers ``requests[i]`` for each request that was sent (``None``: sent,
    no answer, so its outcome is unknown); requests from ``len(responses)`` on were not sent.
    """

    def __init__(self, message: str, responses: list[pb.Response | None]) -> None:
        super().__init__(message)
        self.responses = responses


class RemoteError(KevoError):
    """The node answered with an ``Error``: its message is the text; ``code`` (and
    ``code_name``) say which kind, for programs (users never see enum names)."""

    def __init__(
        self, code: int, message: str, primary: str = "", retained_from_lsn: int = 0
    ) -> None:
        name = pb.ErrorCode.Name(code) if code in pb.ErrorCode.values() else str(code)  # type: ignore[arg-type]
        super().__init__(message or name.removeprefix("ERROR_").lower().replace("_", " "))
        self.code = code
        self.code_name = name
        self.message = message
        self.primary = primary  # with ERROR_NOT_PRIMARY: where writes go
        self.retained_from_lsn = retained_from_lsn  # with ERROR_TOO_OLD: the WAL's first LSN


class RequestTooLargeError(KevoError):
    """The request is over the node's frame limit: refused here, before sending (a node's
    socket would drop such a frame, and the connection with it, without an answer)."""


class ValueTooLargeError(RequestTooLargeError):
    """A key or value over the node's limits (``DEFAULT_LIMITS``), refused before sending."""


def check_entry(key: bytes, value: bytes) -> None:
    """``ValueTooLargeError`` naming the limit unless ``key`` and ``value`` fit a node's."""
    limits = DEFAULT_LIMITS
    if not key or len(key) > limits.max_key_bytes:
        raise ValueTooLargeError(
            f"key of {len(key)} bytes: keys must be 1 to {limits.max_key_bytes} bytes"
        )
    if len(value) > limits.max_value_bytes:
        raise ValueTooLargeError(
            f"value of {len(value)} bytes for key '{printable(key[:40])}': over the node's "
            f"limit of {limits.max_value_bytes} bytes per value"
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    lsn: int
    first_lsn: int
    replicas_applied: int
    wait_timed_out: bool
    deletes_absent: int = 0  # deletes that found no key (0 when not known: see the proto)


@dataclass(frozen=True, slots=True)
class Digest:
    lsn: int
    keys: int
    digest: str


def parse_node(node: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError with a clear message."""
    host, sep, port_text = node.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65535:
        raise ValueError(f"node address must be HOST:PORT, got {node!r}")
    return host.strip("[]"), int(port_text)


def batch_request(
    entries: Iterable[tuple[bytes, bytes | None]],
    wait_replicas: int = 0,
    timeout_ms: int = 0,
    *,
    client_id: bytes = b"",
    seq: int = 0,
    seen_lsn: int = 0,
) -> pb.Request:
    """A ``BatchRequest``: ``(key, value)`` puts and ``(key, None)`` deletes, in order.

    With ``client_id`` and ``seq`` it is idempotent: resent (``mark_retry``), the primary
    answers it from its retry window instead of writing it twice. ``Client.batch_request``
    fills them in; without them the batch is written each time it is sent.
    """
    ops: list[int] = []
    keys: list[bytes] = []
    values: list[bytes] = []
    for key, value in entries:
        check_entry(key, value or b"")
        ops.append(OP_DELETE if value is None else OP_PUT)
        keys.append(key)
        values.append(b"" if value is None else value)
    payload = encode_client_batch(ops, keys, values)
    body = pb.BatchRequest(
        batch=payload,
        wait_replicas=wait_replicas,
        timeout_ms=timeout_ms,
        client_id=client_id,
        seq=seq,
        seen_lsn=seen_lsn,
    )
    return pb.Request(batch=body)


def mark_retry(req: pb.Request) -> None:
    """Flag a batch request as a resend: if the primary no longer remembers it and it may
    have committed where the window cannot see, it is refused instead of written again."""
    if req.WhichOneof("body") == "batch" and req.batch.client_id:
        req.batch.retry = True
