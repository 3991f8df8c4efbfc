"""WAL segment files: naming, the segment header, the sparse LSN index and record scanning.

A segment is named by its first LSN (``00000000000000000001.wal``) and starts with a 40-byte
header (little-endian)::

    offset size field
         0    8 magic       b"KEVOWAL\\n"
         8    4 crc32c      CRC-32C of bytes [12, 40)
        12    2 version     1
        14    2 reserved    0
        16   16 history_id  the history of the segment's records (a switch starts a segment)
        32    8 first_lsn   equals the number in the file name

followed by records (``kevo_repl.core.record``) back to back. The active segment is
zero-filled ahead of the write position (fdatasync then journals no size change), so a scan
treats zeros where a record should start as the end of the data.

Torn-versus-corrupt rule (``scan_segment``): a record that fails its checks is a *torn tail*
only in the last segment and only if it shows a lost write: it runs past the end of the file,
or a whole 512-byte-aligned sector it touches is zero (a page or sector that never reached the
disk reads as the preallocated zeros; a crash cuts writes at page or sector boundaries).
Everything else, and any failure in an earlier segment, is *corrupt*. Zeros from a record
boundary to the end of the file are the end of the data, not a failure. Limit of the rule: a
corrupt record in the last segment whose payload holds a whole zero sector is taken for a
torn tail; it is still cut and reported in the ``RecoveryReport``, never skipped silently.
"""

from __future__ import annotations

import os
import re
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kevo_repl.core.checksum import crc32c
from kevo_repl.core.errors import BadRecordError, CorruptRecordError, StorageError, TornRecordError
from kevo_repl.core.record import (
    RECORD_HEADER_BYTES,
    RECORD_PREFIX_BYTES,
    DecodedRecord,
    decode_record,
    record_extent,
)

__all__ = [
    "HISTORY_ID_BYTES",
    "SEGMENT_HEADER_BYTES",
    "ScanFailure",
    "Segment",
    "SegmentScan",
    "SparseIndex",
    "create_segment",
    "decode_segment_header",
    "encode_segment_header",
    "fsync_dir",
    "open_for_append",
    "open_segment",
    "parse_segment_name",
    "read_records",
    "read_span",
    "scan_segment",
    "segment_name",
]

SEGMENT_MAGIC: Final = b"KEVOWAL\n"
SEGMENT_VERSION: Final = 1
SEGMENT_HEADER_BYTES: Final = 40
HISTORY_ID_BYTES: Final = 16
INDEX_STRIDE_BYTES: Final = 16 * 1024  # read_from scans at most this far past an index point
READ_CHUNK_BYTES: Final = 1024 * 1024
SECTOR_BYTES: Final = 512

_HEADER = struct.Struct("<8sIHH16sQ")
_NAME = re.compile(r"^(\d{20})\.wal$")


def open_segment(path: Path) -> int:
    """A read-only fd of a segment; a vanished one raises ``FileNotFoundError`` (retention
    took it: the caller decides), any other failure ``StorageError`` naming the path."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"opening {path}: {exc}") from exc


def segment_name(first_lsn: int) -> str:
    """File name of the segment whose first LSN is ``first_lsn``: sorts by LSN."""
    return f"{first_lsn:020d}.wal"


def parse_segment_name(name: str) -> int | None:
    """The first LSN encoded in a segment file name, or ``None`` for any other file."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def encode_segment_header(history_id: bytes, first_lsn: int) -> bytes:
    body = _HEADER.pack(SEGMENT_MAGIC, 0, SEGMENT_VERSION, 0, history_id, first_lsn)
    crc = crc32c(body[12:])
    return body[:8] + struct.pack("<I", crc) + body[12:]


def decode_segment_header(buf: bytes) -> tuple[bytes, int]:
    """``(history_id, first_lsn)``; ``BadRecordError`` at offset 0 if the header is bad."""
    if len(buf) < SEGMENT_HEADER_BYTES:
        raise BadRecordError(0, f"segment header needs {SEGMENT_HEADER_BYTES} bytes")
    magic, crc, version, _, history_id, first_lsn = _HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC:
        raise BadRecordError(0, "not a WAL segment (bad magic)")
    if crc32c(buf[12:SEGMENT_HEADER_BYTES]) != crc:
        raise BadRecordError(0, "segment header crc32c mismatch")
    if version != SEGMENT_VERSION:
        raise BadRecordError(0, f"unknown segment version {version}")
    return bytes(history_id), int(first_lsn)


class SparseIndex:
    """(first_lsn, offset) of one record per ``INDEX_STRIDE_BYTES`` of a segment.

    Chosen over a full index so memory stays small with one-entry batches (a 64 MiB segment
    of 182-byte records keeps 4k points, 64 KiB, not 370k) and over a scan from the segment
    start so ``read_from`` decodes at most one stride of records it then skips.
    """

    __slots__ = ("_lsns", "_offsets")

    def __init__(self) -> None:
        self._lsns = array("Q")
        self._offsets = array("Q")

    def note(self, first_lsn: int, offset: int) -> None:
        """Record a record's position if it is a stride past the previous index point."""
        if not self._offsets or offset - self._offsets[-1] >= INDEX_STRIDE_BYTES:
            self._lsns.append(first_lsn)
            self._offsets.append(offset)

    def __len__(self) -> int:
        return len(self._offsets)

    def offset(self, i: int) -> int:
        """The ``i``-th point's offset; points are only appended, so a count taken under the
        log's lock stays valid without it (the LsnAtTime search)."""
        return self._offsets[i]

    def start_offset(self, lsn: int) -> int:
        """Offset of a record at or before the one holding ``lsn`` (scan from here)."""
        i = bisect_right(self._lsns, lsn) - 1
        return self._offsets[i] if i >= 0 else SEGMENT_HEADER_BYTES


@dataclass(slots=True)
class Segment:
    """One segment file's in-memory state; the active one grows as records are written."""

    path: Path
    first_lsn: int
    last_lsn: int  # first_lsn - 1 while empty
    data_end: int  # header + complete records; zeros may follow on disk
    index: SparseIndex = field(default_factory=SparseIndex)
    history_id: bytes = b""  # of every record in it (a history switch starts a segment)


@dataclass(frozen=True, slots=True)
class ScanFailure:
    offset: int
    torn: bool
    reason: str
    bytes_dropped: int  # non-zero bytes from ``offset`` on


@dataclass(frozen=True, slots=True)
class SegmentScan:
    data_end: int
    last_lsn: int
    records: int
    index: SparseIndex
    failure: ScanFailure | None


def _all_zero(buf: bytes, start: int, end: int) -> bool:
    return buf.count(0, start, end) == end - start


def _has_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """True if a whole 512-byte-aligned sector touching [start, end) is zero: a lost write.

    Whole sectors, not just the record's part of one, so a few natural zero bytes at a
    record's edge are not mistaken for a write that never reached the disk.
    """
    for lo in range(start - start % SECTOR_BYTES, end, SECTOR_BYTES):
        if _all_zero(buf, lo, min(lo + SECTOR_BYTES, len(buf))):
            return True
    return False


def scan_segment(buf: bytes, first_lsn: int, *, is_last: bool) -> SegmentScan:
    """Check every record of a segment image; stop at the end of data or the first failure."""
    offset, expected, records, index = SEGMENT_HEADER_BYTES, first_lsn, 0, SparseIndex()

    def failed(torn: bool, reason: str) -> SegmentScan:
        dropped = len(buf.rstrip(b"\0")) - offset
        failure = ScanFailure(offset, torn and is_last, reason, max(dropped, 0))
        return SegmentScan(offset, expected - 1, records, index, failure)

    while offset < len(buf):
        prefix_end = min(offset + RECORD_PREFIX_BYTES, len(buf))
        if _all_zero(buf, offset, prefix_end) and _all_zero(buf, prefix_end, len(buf)):
            break  # preallocated space (or nothing): the end of the data
        try:
            rec: DecodedRecord = decode_record(buf, offset)
        except TornRecordError as exc:
            return failed(True, f"record cut short: {exc.reason}")
        except BadRecordError as exc:
            end = min(record_extent(buf, offset) or offset + RECORD_HEADER_BYTES, len(buf))
            lost_write = _has_zero_sector(buf, offset, end)
            return failed(lost_write, exc.reason + (" (zero-filled sector)" if lost_write else ""))
        if rec.first_lsn != expected:
            return failed(False, f"record starts at LSN {rec.first_lsn}, expected {expected}")
        index.note(rec.first_lsn, offset)
        records += 1
        expected = rec.last_lsn + 1
        offset = rec.end_offset
    return SegmentScan(offset, expected - 1, records, index, None)


def read_records(fd: int, path: Path, start: int, end: int) -> Iterator[tuple[int, int, bytes]]:
    """``(first_lsn, last_lsn, record bytes)`` for the complete records in [start, end).

    ``end`` must be a record boundary known to be written; every record is crc-checked.
    """
    buf, base, offset, chunk = b"", start, start, INDEX_STRIDE_BYTES  # grows to READ_CHUNK
    while offset < end:
        rel = offset - base
        try:
            rec: DecodedRecord | None = decode_record(buf, rel)
        except TornRecordError:
            rec = None  # the chunk ends inside this record: read on
        except BadRecordError as exc:
            raise CorruptRecordError(str(path), offset, exc.reason) from exc
        if rec is None:
            if base + len(buf) >= end:
                raise CorruptRecordError(str(path), offset, "record runs past written data")
            want = min(max(chunk, (record_extent(buf, rel) or 0) - rel), end - offset)
            chunk = min(2 * chunk, READ_CHUNK_BYTES)
            try:
                buf = os.pread(fd, want, offset)
            except OSError as exc:
                raise StorageError(f"reading {path}: {exc}") from exc
            if len(buf) < want:
                raise CorruptRecordError(str(path), offset + len(buf), "file shorter than data")
            base = offset
            continue
        yield rec.first_lsn, rec.last_lsn, buf[rel : rec.end_offset]
        offset = base + rec.end_offset


def read_span(
    plan: list[tuple[Path, int, int]], lsn: int, max_bytes: int | None
) -> Iterator[bytes]:
    """Records with ``last_lsn >= lsn`` from (path, start, end) spans, within ``max_bytes``
    (at least one record). ``FileNotFoundError`` if a segment is gone before it is opened."""
    total = 0
    for path, start, end in plan:
        if start >= end:
            continue
        fd = open_segment(path)
        try:
            for _, last_lsn, record in read_records(fd, path, start, end):
                if last_lsn < lsn:
                    continue
                if max_bytes is not None and total and total + len(record) > max_bytes:
                    return
                total += len(record)
                yield record
        finally:
            os.close(fd)


def open_for_append(path: Path) -> tuple[int, int]:
    """``(fd, file size)`` of a segment opened for writing, fdatasynced once so that all it
    holds (perhaps left in the page cache by a crashed process) is durable from now on."""
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.fdatasync(fd)
            return fd, os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
    except OSError as exc:
        raise StorageError(f"opening WAL segment {path}: {exc}") from exc


def fsync_dir(directory: Path) -> None:
    """Make entries created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: Path, first_lsn: int, history_id: bytes) -> Path:
    """Create a segment durably: header written to a temp file, fsynced, renamed, dir fsynced.

    So a segment file either does not exist or has a complete header.
    """
    path = directory / segment_name(first_lsn)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, encode_segment_header(history_id, first_lsn))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(directory)
    except OSError as exc:
        raise StorageError(f"creating WAL segment {path}: {exc}") from exc
    return path
