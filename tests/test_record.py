"""The WAL record codec: round trip, layout, and every damage is detected and classified."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from kevo_repl.core.errors import BadRecordError, ProtocolError, TornRecordError
from kevo_repl.core.record import (
    MAX_LSN,
    MAX_PAYLOAD_BYTES,
    RECORD_HEADER_BYTES,
    decode_record,
    encode_record,
    peek_lsns,
    record_extent,
    verify_wire_record,
)

lsn_ranges = st.integers(1, MAX_LSN).flatmap(
    lambda first: st.tuples(st.just(first), st.integers(first, min(MAX_LSN, first + 1_000_000)))
)
payloads = st.binary(max_size=2048)


@given(lsn_ranges, payloads, st.binary(max_size=64))
def test_round_trip_at_any_offset(lsns: tuple[int, int], payload: bytes, prefix: bytes) -> None:
    first, last = lsns
    record = encode_record(first, last, payload)
    assert len(record) == RECORD_HEADER_BYTES + len(payload)
    decoded = decode_record(prefix + record + b"trailing", len(prefix))
    assert (decoded.first_lsn, decoded.last_lsn) == (first, last)
    assert bytes(decoded.payload) == payload
    assert (decoded.offset, decoded.end_offset) == (len(prefix), len(prefix) + len(record))
    assert decoded.count == last - first + 1
    assert peek_lsns(record) == (first, last)
    assert verify_wire_record(record).first_lsn == first
    assert record_extent(prefix + record, len(prefix)) == len(prefix) + len(record)


@given(lsn_ranges, payloads, st.data())
def test_any_single_byte_corruption_is_detected(
    lsns: tuple[int, int], payload: bytes, data: st.DataObject
) -> None:
    record = bytearray(encode_record(*lsns, payload))
    position = data.draw(st.integers(0, len(record) - 1), label="position")
    record[position] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises((BadRecordError, TornRecordError)):
        decode_record(bytes(record))
    with pytest.raises(ProtocolError):
        verify_wire_record(bytes(record))


@given(lsn_ranges, payloads, st.data())
def test_a_cut_record_is_torn(lsns: tuple[int, int], payload: bytes, data: st.DataObject) -> None:
    record = encode_record(*lsns, payload)
    cut = data.draw(st.integers(0, len(record) - 1), label="cut")
    with pytest.raises(TornRecordError) as info:
        decode_record(record[:cut])
    assert info.value.offset == 0
    with pytest.raises(ProtocolError):
        verify_wire_record(record[:cut])


def test_layout_matches_the_documented_header() -> None:
    record = encode_record(7, 9, b"abc")
    length, crc, magic, version, flags, length_inv, first, last = struct.unpack_from(
        "<II2sBBIQQ", record
    )
    assert (length, magic, version, flags) == (len(record) - 4, b"KW", 1, 0)
    assert length_inv == length ^ 0xFFFFFFFF
    assert (first, last) == (7, 9)
    assert crc == crc32c(record[8:])
    assert record[32:] == b"abc"


def test_zero_filled_space_is_never_a_record() -> None:
    with pytest.raises(BadRecordError):
        decode_record(bytes(4096))
    assert record_extent(bytes(64)) is None


def test_a_corrupt_length_is_refused_not_taken_for_a_cut_record() -> None:
    record = bytearray(encode_record(1, 1, b"x" * 100))
    record[1] ^= 0x40  # length now claims far more bytes than the buffer holds
    with pytest.raises(BadRecordError, match="check field"):
        decode_record(bytes(record))


def test_verify_wire_record_refuses_trailing_bytes() -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        verify_wire_record(encode_record(1, 1, b"x") + b"\0")


@pytest.mark.parametrize(
    ("first", "last", "size"),
    [(0, 1, 0), (2, 1, 0), (1, MAX_LSN + 1, 0), (1, 1, MAX_PAYLOAD_BYTES + 1)],
)
def test_encode_refuses_out_of_range_input(first: int, last: int, size: int) -> None:
    with pytest.raises(ValueError):
        encode_record(first, last, bytes(size))


@pytest.mark.parametrize(("first", "last"), [(0, 0), (5, 4)])
def test_decode_refuses_bad_lsns_even_with_a_good_crc(first: int, last: int) -> None:
    record = bytearray(encode_record(1, 1, b"p"))
    struct.pack_into("<QQ", record, 16, first, last)
    struct.pack_into("<I", record, 4, crc32c(bytes(record[8:])))
    with pytest.raises(BadRecordError, match="LSN range"):
        decode_record(bytes(record))


def test_decode_refuses_unknown_flags_and_version() -> None:
    for position, value in ((11, 1), (10, 2)):
        record = bytearray(encode_record(1, 1, b"p"))
        record[position] = value
        struct.pack_into("<I", record, 4, crc32c(bytes(record[8:])))
        with pytest.raises(BadRecordError):
            decode_record(bytes(record))


def test_peek_lsns_refuses_what_is_not_a_record() -> None:
    with pytest.raises(ProtocolError):
        peek_lsns(b"short")
    with pytest.raises(ProtocolError):
        peek_lsns(bytes(64))
