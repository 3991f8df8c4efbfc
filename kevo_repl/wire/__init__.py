"""Protobuf <-> Python for the wire contract in ``proto/kevo_repl/v1/replication.proto``.

``pb`` is the generated code (committed; ``python -m kevo_repl.protogen --check`` proves it is
current). The helpers here are pure (no sockets, clocks or files): they turn bytes into checked
messages and back, and raise ``ProtocolError`` (as ``WireError``, with an ``ErrorCode``) for
anything a peer got wrong.
"""

from kevo_repl.wire import pb
from kevo_repl.wire.backend import FAST_BACKEND, protobuf_backend, slow_backend_warning
from kevo_repl.wire.batch import (
    CLIENT_WRITE_BYTES,
    DEFAULT_LIMITS,
    HISTORY_ID_BYTES,
    KNOWN_OPS,
    BytesLike,
    WireError,
    WireLimits,
    decode_batch,
    encode_client_batch,
    encode_single,
    parse_client_batch,
    parse_message,
    read_client_writes,
    seal_batch,
    validate_client_batch,
)
from kevo_repl.wire.envelope import (
    STREAM_TOPICS,
    TOPIC_BEACON,
    TOPIC_WAL,
    decode_beacon,
    decode_request,
    decode_response,
    encode_beacon,
    encode_request,
    encode_response,
    encode_wal_frame,
    encode_write_replies,
    encode_write_reply,
    error_response,
    split_stream_frame,
    split_write_replies,
)

__all__ = [
    "CLIENT_WRITE_BYTES",
    "DEFAULT_LIMITS",
    "FAST_BACKEND",
    "HISTORY_ID_BYTES",
    "KNOWN_OPS",
    "STREAM_TOPICS",
    "TOPIC_BEACON",
    "TOPIC_WAL",
    "BytesLike",
    "WireError",
    "WireLimits",
    "decode_batch",
    "decode_beacon",
    "decode_request",
    "decode_response",
    "encode_beacon",
    "encode_client_batch",
    "encode_request",
    "encode_response",
    "encode_single",
    "encode_wal_frame",
    "encode_write_replies",
    "encode_write_reply",
    "error_response",
    "parse_client_batch",
    "parse_message",
    "pb",
    "protobuf_backend",
    "read_client_writes",
    "seal_batch",
    "slow_backend_warning",
    "split_stream_frame",
    "split_write_replies",
    "validate_client_batch",
]
