"""Columnar ``WalBatch`` payloads: build, validate, seal (group commit) and decode.

A ``WalBatch`` is three parallel columns (ops, keys, values) plus ``history_id`` and
``commit_time_us``. Protobuf parsing merges concatenated messages: repeated fields append
(packed runs included: the spec requires a parser to accept several packed runs of one field
and join them) and singular scalars take the last value. So a group commit is
``prefix + b"".join(client_payloads) + suffix`` where the suffix only sets history id and
commit time and the prefix only lists ``client_writes`` (which entries belong to which
idempotent client batch, by entry offset: repeated, so one per batch, in order): the
primary checks each client payload once (:func:`validate_client_batch`) and never re-encodes
an entry. Client payloads may set neither. The prefix comes first so a restart can read the
client writes of many records (:func:`read_client_writes`) without parsing their entries.

The payload is stored in the WAL verbatim and parsed by every replica, so validation rejects
anything a replica could misread: unknown ops, ragged columns, unknown fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from kevo_repl.core.errors import ProtocolError
from kevo_repl.core.record import MAX_PAYLOAD_BYTES
from kevo_repl.wire import pb

__all__ = [
    "CLIENT_WRITE_BYTES",
    "DEFAULT_LIMITS",
    "HISTORY_ID_BYTES",
    "KNOWN_OPS",
    "BytesLike",
    "WireError",
    "WireLimits",
    "decode_batch",
    "encode_client_batch",
    "encode_single",
    "parse_client_batch",
    "parse_message",
    "read_client_writes",
    "seal_batch",
    "validate_client_batch",
    "varint",
]

BytesLike = bytes | bytearray | memoryview
HISTORY_ID_BYTES: Final = 16
KNOWN_OPS: Final = frozenset({pb.OP_PUT, pb.OP_DELETE})

# The most one ClientWrite adds to a record's prefix: tag, length, a 16-byte id and hash,
# seq, offset and count as varints (61 bytes at most).
CLIENT_WRITE_BYTES: Final = 64
_CLIENT_WRITES_TAG: Final = 0x32  # WalBatch field 6, length-delimited

_M = TypeVar("_M", bound=Message)
_KIB: Final = 1024
_MIB: Final = 1024 * _KIB


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Size limits enforced on what peers send; one value shared by node and client.

    How they fit together: a client write is one request frame (``max_request_bytes``), so
    its payload fits one WAL record (``max_write_bytes``, below the record codec's limit).
    The primary cuts groups into records of at most ``max_stream_record_bytes``; only those
    go on the PUB stream (its frame limit), a larger single write is sent to followers by
    WalSync alone. Every reply a follower asks for stays under ``max_reply_bytes``, the
    MAXMSGSIZE of its DEALER: a WalSync reply carries at most 16 MiB of records, or one
    record of up to ``max_write_bytes``.
    """

    max_key_bytes: int = 511  # LMDB's compiled-in key limit (StateStore.max_key_bytes)
    max_value_bytes: int = 4 * _MIB
    max_entries: int = 65536  # per client batch
    max_request_bytes: int = 16 * _MIB  # one DEALER -> ROUTER frame
    max_stream_record_bytes: int = 256 * _KIB  # larger records reach followers by WalSync only
    max_reply_bytes: int = 24 * _MIB  # what a follower's DEALER accepts

    @property
    def max_write_bytes(self) -> int:
        """The largest client payload one record can hold (with the primary's suffix)."""
        return min(self.max_request_bytes, MAX_PAYLOAD_BYTES - _KIB)

    @property
    def max_stream_frame_bytes(self) -> int:
        """The largest PUB frame: topic byte + record header + payload."""
        return self.max_stream_record_bytes + 1


DEFAULT_LIMITS: Final = WireLimits()


class WireError(ProtocolError):
    """A ``ProtocolError`` that carries the ``ErrorCode`` to answer with."""

    def __init__(self, message: str, code: pb.ErrorCode.ValueType = pb.ERROR_BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def parse_message(message: _M, data: BytesLike, what: str) -> _M:
    """Parse ``data`` into ``message``; any decode failure becomes a ``WireError``.

    upb parses any buffer, so memoryview slices of a received frame need no copy (the stub
    types the argument as ``bytes``; hence the cast).
    """
    try:
        message.ParseFromString(cast("bytes", data))
    except DecodeError as exc:
        raise WireError(f"{what}: not a valid protobuf message ({exc})") from None
    return message


def encode_client_batch(
    ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes]
) -> bytes:
    """A client's ``WalBatch`` (no history id, no commit time) for ``BatchRequest.batch``.

    Raises ``ValueError`` when the columns differ in length (local misuse, not a peer's fault).
    Content rules are checked by the primary (:func:`validate_client_batch`).
    """
    if not len(ops) == len(keys) == len(values):
        raise ValueError(
            f"columns differ in length: {len(ops)} ops, {len(keys)} keys, {len(values)} values"
        )
    batch = pb.WalBatch(ops=cast("Sequence[pb.Op.ValueType]", ops), keys=keys, values=values)
    return batch.SerializeToString()


def validate_client_batch(
    payload: BytesLike, *, max_key_bytes: int, max_value_bytes: int, max_entries: int
) -> int:
    """The entry count of a valid client batch; see :func:`parse_client_batch`."""
    return len(
        parse_client_batch(
            payload,
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            max_entries=max_entries,
        ).keys
    )


def parse_client_batch(
    payload: BytesLike, *, max_key_bytes: int, max_value_bytes: int, max_entries: int
) -> pb.WalBatch:
    """Check a client's ``BatchRequest.batch`` before it is sealed into the WAL.

    Returns the parsed batch, whose columns the primary applies without parsing again.
    Raises ``WireError`` (a ``ProtocolError``; ``code`` is ``ERROR_TOO_LARGE`` for size
    limits, else ``ERROR_BAD_REQUEST``). Whole columns are checked
    with builtins (min/max/set); only a failure walks entries to name the first bad one.
    """
    batch = parse_message(pb.WalBatch(), payload, "batch")
    ops, keys, values = batch.ops, batch.keys, batch.values
    count = len(ops)
    if len(UnknownFieldSet(batch)):
        raise WireError("batch: unknown fields (a newer client?); they would be stored blindly")
    if batch.history_id or batch.commit_time_us or len(batch.client_writes):
        raise WireError(
            "batch: history_id, commit_time_us and client_writes are set by the primary, "
            "not clients"
        )
    if count == len(keys) == len(values) == 0:
        raise WireError("batch: no entries")
    if not count == len(keys) == len(values):
        raise WireError(
            f"batch: columns differ in length: {count} ops, {len(keys)} keys, {len(values)} values"
        )
    if count > max_entries:
        raise WireError(
            f"batch: {count} entries, over the limit of {max_entries}", pb.ERROR_TOO_LARGE
        )
    if not KNOWN_OPS.issuperset(ops):
        index, op = next((i, op) for i, op in enumerate(ops) if op not in KNOWN_OPS)
        raise WireError(f"batch: entry {index}: unknown op {op} (expected OP_PUT or OP_DELETE)")
    key_sizes = list(map(len, keys))
    if min(key_sizes) == 0:
        raise WireError(f"batch: entry {key_sizes.index(0)}: empty key")
    if max(key_sizes) > max_key_bytes:
        index, size = next((i, n) for i, n in enumerate(key_sizes) if n > max_key_bytes)
        raise WireError(
            f"batch: entry {index}: key of {size} bytes, over the limit of {max_key_bytes}",
            pb.ERROR_TOO_LARGE,
        )
    value_sizes = list(map(len, values))
    if max(value_sizes) > max_value_bytes:
        index, size = next((i, n) for i, n in enumerate(value_sizes) if n > max_value_bytes)
        raise WireError(
            f"batch: entry {index}: value of {size} bytes, over the limit of {max_value_bytes}",
            pb.ERROR_TOO_LARGE,
        )
    if pb.OP_DELETE in ops:
        sizes = zip(ops, value_sizes, strict=True)
        bad = next((i for i, (op, n) in enumerate(sizes) if op == pb.OP_DELETE and n), None)
        if bad is not None:
            raise WireError(f"batch: entry {bad}: a delete must have an empty value")
    return batch


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_single(op: int, key: bytes, value: bytes) -> bytes:
    """``encode_client_batch([op], [key], [value])`` byte for byte, without building a
    message: one Put or Delete is the common write, and this is its hot path."""
    return b"".join(
        (
            b"\x0a\x01",
            varint(op),
            b"\x12",
            varint(len(key)),
            key,
            b"\x1a",
            varint(len(value)),
            value,
        )
    )


def seal_batch(
    client_payloads: Sequence[bytes],
    history_id: bytes,
    commit_time_us: int,
    client_writes: Sequence[pb.ClientWrite] = (),
) -> bytes:
    """One WAL payload from validated client payloads: a prefix, their concatenation, a suffix.

    The prefix lists ``client_writes`` (each ``offset`` is its first entry's index among all
    the payloads' entries); the suffix ``WalBatch(history_id, commit_time_us)`` comes last, so
    its scalars win. Raises ``ValueError`` on local misuse (nothing to seal, history id not 16
    bytes).
    """
    if not client_payloads:
        raise ValueError("seal_batch: no client payloads")
    if len(history_id) != HISTORY_ID_BYTES:
        raise ValueError(
            f"seal_batch: history_id must be {HISTORY_ID_BYTES} bytes, got {len(history_id)}"
        )
    prefix = pb.WalBatch(client_writes=client_writes).SerializeToString() if client_writes else b""
    suffix = pb.WalBatch(history_id=history_id, commit_time_us=commit_time_us)
    return b"".join((prefix, *client_payloads, suffix.SerializeToString()))


def read_client_writes(payload: BytesLike) -> list[pb.ClientWrite]:
    """The ``client_writes`` of a sealed payload, from its prefix alone (entries unparsed).

    Sound because client payloads never hold field 6 (:func:`parse_client_batch`), so the
    prefix is the run of field-6 tags the payload starts with. Raises ``WireError`` on a
    prefix cut short or unparsable.
    """
    view = memoryview(payload)
    out: list[pb.ClientWrite] = []
    pos, end = 0, len(view)
    while pos < end and view[pos] == _CLIENT_WRITES_TAG:
        length, shift, pos = 0, 0, pos + 1
        while True:
            if pos >= end or shift > 63:
                raise WireError("WAL batch: client write prefix cut short")
            byte = view[pos]
            length |= (byte & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
            if byte < 0x80:
                break
        if pos + length > end:
            raise WireError("WAL batch: client write prefix cut short")
        out.append(parse_message(pb.ClientWrite(), view[pos : pos + length], "client write"))
        pos += length
    return out


def decode_batch(payload: BytesLike) -> pb.WalBatch:
    """Parse a sealed WAL payload. Raises ``WireError`` on garbage, ragged columns or an
    unknown op: a replica must never half-understand a batch it is about to apply."""
    batch = parse_message(pb.WalBatch(), payload, "WAL batch")
    count = len(batch.ops)
    if not count == len(batch.keys) == len(batch.values):
        raise WireError(
            f"WAL batch: columns differ in length: {count} ops, {len(batch.keys)} keys, "
            f"{len(batch.values)} values"
        )
    if not KNOWN_OPS.issuperset(batch.ops):
        raise WireError(f"WAL batch: unknown op among {sorted(set(batch.ops))}")
    return batch
