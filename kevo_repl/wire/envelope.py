"""Request/Response envelopes (DEALER -> ROUTER) and stream frames (PUB -> SUB).

Requests and responses are one frame each: a ``Request``/``Response`` with a ``request_id``
and a oneof body. Decoding checks only what the envelope itself can know (size, parse, a body
this version understands); the node checks field values per request type. An unknown body
(a newer peer) parses into unknown fields, so it surfaces as "no body" and is refused with
``ERROR_BAD_REQUEST`` rather than half-handled.

Stream frames are one frame each, the first byte is the topic: ``W`` + WAL record bytes (the
same bytes as on disk), ``Z`` + that record as a zstd frame, ``B`` + ``Beacon``.
:func:`split_stream_frame` returns the rest as a memoryview so a multi-megabyte record is
not copied just to drop one byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kevo_repl.wire import pb
from kevo_repl.wire.batch import (
    DEFAULT_LIMITS,
    BytesLike,
    WireError,
    WireLimits,
    parse_message,
    varint,
)

__all__ = [
    "STREAM_TOPICS",
    "TOPIC_BEACON",
    "TOPIC_WAL",
    "TOPIC_ZSTD",
    "decode_beacon",
    "decode_request",
    "decode_response",
    "encode_beacon",
    "encode_request",
    "encode_response",
    "encode_wal_frame",
    "encode_write_replies",
    "encode_write_reply",
    "error_response",
    "split_stream_frame",
    "split_write_replies",
]

TOPIC_WAL: Final = b"W"
TOPIC_BEACON: Final = b"B"
TOPIC_ZSTD: Final = b"Z"  # a W record as one zstd frame (wire/compression.py)
STREAM_TOPICS: Final = frozenset({TOPIC_WAL, TOPIC_BEACON, TOPIC_ZSTD})

_BODY: Final = "body"


def decode_request(frame: BytesLike, limits: WireLimits = DEFAULT_LIMITS) -> pb.Request:
    """Parse one request frame. Raises ``WireError`` (a ``ProtocolError``) for an oversize
    frame (``ERROR_TOO_LARGE``, checked before parsing), garbage, or no known body."""
    if len(frame) > limits.max_request_bytes:
        raise WireError(
            f"request: frame of {len(frame)} bytes, over the limit of {limits.max_request_bytes}",
            pb.ERROR_TOO_LARGE,
        )
    request = parse_message(pb.Request(), frame, "request")
    if request.WhichOneof(_BODY) is None:
        raise WireError(f"request {request.request_id}: no body, or a body type this node lacks")
    return request


def encode_request(request: pb.Request) -> bytes:
    """Serialize a request; ``ValueError`` if it has no body (a local bug)."""
    if request.WhichOneof(_BODY) is None:
        raise ValueError(f"request {request.request_id} has no body")
    return request.SerializeToString()


def decode_response(frame: BytesLike) -> pb.Response:
    """Parse one response frame. Raises ``WireError`` for garbage or no known body.

    No size limit here: the requester bounds responses through what it asks for
    (``WalSyncRequest.max_bytes``, bootstrap ``chunk_bytes``), and the socket's MAXMSGSIZE
    is the backstop.
    """
    response = parse_message(pb.Response(), frame, "response")
    if response.WhichOneof(_BODY) is None:
        raise WireError(f"response {response.request_id}: no body, or a body type we lack")
    return response


def encode_response(response: pb.Response) -> bytes:
    """Serialize a response; ``ValueError`` if it has no body (a local bug)."""
    if response.WhichOneof(_BODY) is None:
        raise ValueError(f"response {response.request_id} has no body")
    return response.SerializeToString()


def error_response(
    request_id: int,
    code: pb.ErrorCode.ValueType,
    message: str,
    *,
    primary: str = "",
    retained_from_lsn: int = 0,
) -> bytes:
    """A serialized ``Response`` carrying ``Error``.

    ``primary`` goes with ``ERROR_NOT_PRIMARY`` (HOST:PORT), ``retained_from_lsn`` with
    ``ERROR_TOO_OLD``. Use request id 0 when the request could not be parsed.
    """
    error = pb.Error(
        code=code, message=message, primary=primary, retained_from_lsn=retained_from_lsn
    )
    return pb.Response(request_id=request_id, error=error).SerializeToString()


def encode_write_reply(request_id: int, first_lsn: int, lsn: int, deletes_absent: int = 0) -> bytes:
    """``Response{request_id, write{lsn, first_lsn, deletes_absent}}`` byte for byte, without
    building messages: every acknowledged write is answered with one, so this is a hot path."""
    body = (b"\x08" + varint(lsn) if lsn else b"") + (
        b"\x10" + varint(first_lsn) if first_lsn else b""
    )
    if deletes_absent:
        body += b"\x28" + varint(deletes_absent)
    head = b"\x08" + varint(request_id) if request_id else b""
    return head + b"\xa2\x01" + varint(len(body)) + body


def encode_wal_frame(record: bytes) -> bytes:
    """A stream frame for one WAL record (the record bytes exactly as stored)."""
    return TOPIC_WAL + record


def encode_beacon(
    history_id: bytes,
    last_lsn: int,
    time_us: int,
    retained_from_lsn: int = 0,
    writes_waiting: bool = False,
) -> bytes:
    """A stream frame for a beacon: topic ``B`` + ``Beacon``."""
    beacon = pb.Beacon(
        history_id=history_id,
        last_lsn=last_lsn,
        time_us=time_us,
        retained_from_lsn=retained_from_lsn,
        writes_waiting=writes_waiting,
    )
    return TOPIC_BEACON + beacon.SerializeToString()


def split_stream_frame(frame: BytesLike) -> tuple[bytes, memoryview]:
    """``(topic, rest)`` of a stream frame; ``rest`` is a zero-copy view of the frame.

    Raises ``WireError`` for an empty frame or an unknown topic. Call ``bytes(rest)`` if the
    caller needs to keep the payload beyond the frame's lifetime or wants real bytes.
    """
    if len(frame) == 0:
        raise WireError("stream: empty frame")
    view = memoryview(frame)
    topic = bytes(view[:1])
    if topic not in STREAM_TOPICS:
        raise WireError(f"stream: unknown topic {topic!r}")
    return topic, view[1:]


def decode_beacon(rest: BytesLike) -> pb.Beacon:
    """Parse the part of a ``B`` frame after the topic. Raises ``WireError`` on garbage."""
    return parse_message(pb.Beacon(), rest, "beacon")


def _packed(field_tag: bytes, varints: bytearray) -> bytes:
    return field_tag + varint(len(varints)) + varints if varints else b""


def encode_write_replies(answers: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``Response{writes: WriteReplies}`` byte for byte, for ``(request_id, first_lsn, lsn,
    deletes_absent)`` answers to one connection: one frame, one send, for a whole group."""
    ids, firsts, lsns, gone = bytearray(), bytearray(), bytearray(), bytearray()
    any_gone = 0
    for rid, first, lsn, absent in answers:
        ids += varint(rid)
        firsts += varint(first)
        lsns += varint(lsn)
        gone += varint(absent)
        any_gone |= absent
    body = (
        _packed(b"\x0a", ids)
        + _packed(b"\x12", firsts)
        + _packed(b"\x1a", lsns)
        + (_packed(b"\x22", gone) if any_gone else b"")
    )
    return b"\xaa\x01" + varint(len(body)) + body


def split_write_replies(resp: pb.Response) -> list[pb.Response]:
    """A ``WriteReplies`` as the one ``Response{write}`` per request it stands for (any
    other response as itself), so a reader handles both shapes alike."""
    if resp.WhichOneof(_BODY) != "writes":
        return [resp]
    w = resp.writes
    n = len(w.request_ids)
    if not n:
        raise WireError("write replies: no request ids")
    if len(w.first_lsns) != n or len(w.lsns) != n or len(w.deletes_absent) not in (0, n):
        raise WireError(f"write replies: {n} request ids with columns of other lengths")
    gone = w.deletes_absent or [0] * n
    return [
        pb.Response(
            request_id=rid,
            write=pb.WriteResponse(lsn=lsn, first_lsn=first, deletes_absent=absent),
        )
        for rid, first, lsn, absent in zip(w.request_ids, w.first_lsns, w.lsns, gone, strict=True)
    ]
