"""WAL record codec: one record per batch, the same bytes on disk and on the wire.

Byte layout (all integers little-endian)::

    offset size field
         0    4 length      bytes after this field: 28 + len(payload)
         4    4 crc32c      CRC-32C (Castagnoli) of bytes [8, 4 + length): header + payload
         8    2 magic       b"KW"
        10    1 version     1
        11    1 flags       0 (reserved; anything else is refused)
        12    4 length_inv  length XOR 0xFFFFFFFF
        16    8 first_lsn   first LSN of the batch (>= 1)
        24    8 last_lsn    last LSN of the batch (>= first_lsn)
        32    n payload     serialized kevo_repl.v1.WalBatch, opaque here (n <= 64 MiB)

Why these fields: the LSNs live only here (the WAL assigns them at append time, the payload
never repeats them). ``magic`` and ``length_inv`` make 16 zero bytes (preallocated space)
never look like a record, and let a reader trust ``length`` before the crc can be checked,
so a corrupted length is reported as corrupt instead of looking like a record cut short
by a crash. The crc covers everything after itself; ``length`` is covered by ``length_inv``.

``decode_record`` raises ``TornRecordError`` when the buffer ends before the record does
(normal at the tail of a log after a crash) and ``BadRecordError`` for a complete record that
fails a check. ``verify_wire_record`` is the replica's check of one record received whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from kevo_repl.core.checksum import crc32c
from kevo_repl.core.errors import BadRecordError, ProtocolError, TornRecordError

__all__ = [
    "MAGIC",
    "MAX_PAYLOAD_BYTES",
    "RECORD_HEADER_BYTES",
    "RECORD_PREFIX_BYTES",
    "VERSION",
    "DecodedRecord",
    "decode_record",
    "encode_record",
    "peek_lsns",
    "record_extent",
    "verify_wire_record",
]

MAGIC: Final = b"KW"
VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
MAX_LSN: Final = (1 << 63) - 1  # fits the int64/uint64 fields of every peer
RECORD_HEADER_BYTES: Final = 32
# length, crc, magic, version, flags, length_inv: enough to trust ``length``.
RECORD_PREFIX_BYTES: Final = 16

_HEADER = struct.Struct("<II2sBBIQQ")
_PREFIX = struct.Struct("<II2sBBI")
_LSNS = struct.Struct("<QQ")
_MIN_LENGTH: Final = RECORD_HEADER_BYTES - 4
_MAX_LENGTH: Final = _MIN_LENGTH + MAX_PAYLOAD_BYTES
_INV: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One checked record: its LSN range, a zero-copy view of its payload, where it lies."""

    first_lsn: int
    last_lsn: int
    payload: memoryview
    offset: int
    end_offset: int

    @property
    def count(self) -> int:
        """Number of entries (LSNs) in the batch."""
        return self.last_lsn - self.first_lsn + 1


def encode_record(first_lsn: int, last_lsn: int, payload: bytes) -> bytes:
    """The record bytes for a batch; ``ValueError`` on out-of-range LSNs or payload size."""
    if not 1 <= first_lsn <= last_lsn <= MAX_LSN:
        raise ValueError(f"bad LSN range [{first_lsn}, {last_lsn}]")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    length = _MIN_LENGTH + len(payload)
    header = bytearray(_HEADER.pack(0, 0, MAGIC, VERSION, 0, length ^ _INV, first_lsn, last_lsn))
    crc = crc32c(payload, crc32c(memoryview(header)[8:]))
    struct.pack_into("<II", header, 0, length, crc)
    return b"".join((header, payload))


def record_extent(buf: bytes | memoryview, offset: int = 0) -> int | None:
    """The record's claimed end offset if its prefix is self-consistent, else ``None``.

    Lets a log scanner bound a damaged record (to look for lost-write zeros) without
    trusting a length that ``length_inv`` does not confirm.
    """
    if len(buf) - offset < RECORD_PREFIX_BYTES:
        return None
    length, _, magic, version, _, length_inv = _PREFIX.unpack_from(buf, offset)
    if magic != MAGIC or version != VERSION or length ^ _INV != length_inv:
        return None
    if not _MIN_LENGTH <= length <= _MAX_LENGTH:
        return None
    return int(offset + 4 + length)


def decode_record(buf: bytes | memoryview, offset: int = 0) -> DecodedRecord:
    """Decode and check the record starting at ``offset``.

    Raises ``TornRecordError`` if ``buf`` ends before the record (or its prefix) does, and
    ``BadRecordError`` if the record is complete but its layout or crc is wrong.
    """
    size = len(buf)
    if offset < 0 or offset > size:
        raise ValueError(f"offset {offset} outside a buffer of {size} bytes")
    if size - offset < RECORD_PREFIX_BYTES:
        raise TornRecordError(offset, f"only {size - offset} bytes left for a record header")
    length, crc, magic, version, flags, length_inv = _PREFIX.unpack_from(buf, offset)
    if magic != MAGIC:
        raise BadRecordError(offset, f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise BadRecordError(offset, f"unknown record version {version}")
    if length ^ _INV != length_inv:
        raise BadRecordError(offset, f"length {length} does not match its check field")
    if not _MIN_LENGTH <= length <= _MAX_LENGTH:
        raise BadRecordError(offset, f"length {length} outside [{_MIN_LENGTH}, {_MAX_LENGTH}]")
    end = offset + 4 + length
    if end > size:
        raise TornRecordError(offset, f"record of {4 + length} bytes, {size - offset} present")
    view = memoryview(buf)[offset:end]
    if crc32c(view[8:]) != crc:
        raise BadRecordError(offset, "crc32c mismatch")
    if flags != 0:
        raise BadRecordError(offset, f"unknown flags {flags:#x}")
    first_lsn, last_lsn = _LSNS.unpack_from(view, 16)
    if not 1 <= first_lsn <= last_lsn <= MAX_LSN:
        raise BadRecordError(offset, f"bad LSN range [{first_lsn}, {last_lsn}]")
    return DecodedRecord(first_lsn, last_lsn, view[RECORD_HEADER_BYTES:], offset, end)


def peek_lsns(record: bytes | memoryview) -> tuple[int, int]:
    """``(first_lsn, last_lsn)`` read without the crc check: cheap, for routing only.

    Raises ``ProtocolError`` if ``record`` is too short or has no record magic.
    """
    if len(record) < RECORD_HEADER_BYTES or bytes(record[8:10]) != MAGIC:
        raise ProtocolError("not a WAL record")
    first_lsn, last_lsn = _LSNS.unpack_from(record, 16)
    return int(first_lsn), int(last_lsn)


def verify_wire_record(record: bytes | memoryview) -> DecodedRecord:
    """Check one whole record received from a peer; any problem is a ``ProtocolError``."""
    try:
        decoded = decode_record(record)
    except (BadRecordError, TornRecordError) as exc:
        raise ProtocolError(f"bad WAL record from peer: {exc}") from exc
    if decoded.end_offset != len(record):
        raise ProtocolError(f"{len(record) - decoded.end_offset} trailing bytes after record")
    return decoded
