"""Request/response envelopes and stream frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.wire import (
    TOPIC_BEACON,
    TOPIC_WAL,
    WireError,
    WireLimits,
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
    pb,
    split_stream_frame,
    split_write_replies,
)

HISTORY = bytes(range(16))


def test_request_roundtrip() -> None:
    req = pb.Request(request_id=42, get=pb.GetRequest(key=b"k", min_lsn=9, timeout_ms=5))
    got = decode_request(encode_request(req))
    assert got == req
    assert got.WhichOneof("body") == "get"


def test_empty_body_message_still_counts_as_a_body() -> None:
    req = pb.Request(request_id=1, status=pb.StatusRequest())
    assert decode_request(encode_request(req)).WhichOneof("body") == "status"


def test_request_without_body_is_refused() -> None:
    with pytest.raises(WireError, match="request 5: no body") as info:
        decode_request(pb.Request(request_id=5).SerializeToString())
    assert info.value.code == pb.ERROR_BAD_REQUEST


def test_request_with_a_newer_body_type_is_refused() -> None:
    newer = pb.Request(request_id=3).SerializeToString() + b"\xd2\x05\x00"  # field 90, empty
    with pytest.raises(WireError, match="no body"):
        decode_request(newer)


def test_oversize_request_is_refused_before_parsing() -> None:
    limits = WireLimits(max_request_bytes=16)
    frame = encode_request(pb.Request(request_id=1, put=pb.PutRequest(key=b"k", value=b"v" * 20)))
    with pytest.raises(WireError, match="over the limit of 16") as info:
        decode_request(frame, limits)
    assert info.value.code == pb.ERROR_TOO_LARGE
    with pytest.raises(WireError, match="over the limit"):
        decode_request(b"\xff" * 17, limits)  # garbage, but the size check comes first


def test_garbage_request_is_refused() -> None:
    with pytest.raises(WireError, match="request: not a valid protobuf"):
        decode_request(b"\x0a\x05")


def test_response_roundtrip_and_refusals() -> None:
    resp = pb.Response(request_id=7, write=pb.WriteResponse(lsn=10, first_lsn=8))
    assert decode_response(encode_response(resp)) == resp
    with pytest.raises(WireError, match="response 7: no body"):
        decode_response(pb.Response(request_id=7).SerializeToString())
    with pytest.raises(WireError, match="not a valid protobuf"):
        decode_response(b"\x08")


def test_encoding_a_bodiless_envelope_is_a_local_bug() -> None:
    with pytest.raises(ValueError, match="no body"):
        encode_request(pb.Request(request_id=1))
    with pytest.raises(ValueError, match="no body"):
        encode_response(pb.Response(request_id=1))


def test_error_response_carries_every_field() -> None:
    frame = error_response(9, pb.ERROR_NOT_PRIMARY, "go there", primary="10.0.0.1:7000")
    got = decode_response(frame)
    assert got.request_id == 9
    assert got.WhichOneof("body") == "error"
    assert (got.error.code, got.error.message, got.error.primary) == (
        pb.ERROR_NOT_PRIMARY,
        "go there",
        "10.0.0.1:7000",
    )
    too_old = decode_response(
        error_response(0, pb.ERROR_TOO_OLD, "bootstrap", retained_from_lsn=50)
    )
    assert too_old.error.retained_from_lsn == 50
    assert too_old.request_id == 0


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1),
)
def test_beacon_frame_roundtrip(history_id: bytes, last_lsn: int, time_us: int, floor: int) -> None:
    frame = encode_beacon(history_id, last_lsn, time_us, floor)
    topic, rest = split_stream_frame(frame)
    assert topic == TOPIC_BEACON
    beacon = decode_beacon(rest)
    assert (beacon.history_id, beacon.last_lsn, beacon.time_us, beacon.retained_from_lsn) == (
        history_id,
        last_lsn,
        time_us,
        floor,
    )


def test_wal_frame_rest_is_a_zero_copy_view() -> None:
    record = b"\x00\x01record bytes"
    frame = encode_wal_frame(record)
    topic, rest = split_stream_frame(frame)
    assert topic == TOPIC_WAL
    assert isinstance(rest, memoryview)
    assert rest.obj is frame
    assert bytes(rest) == record


def test_stream_frame_refusals() -> None:
    with pytest.raises(WireError, match="empty frame"):
        split_stream_frame(b"")
    with pytest.raises(WireError, match="unknown topic b'X'"):
        split_stream_frame(b"Xpayload")
    with pytest.raises(WireError, match="beacon: not a valid protobuf"):
        decode_beacon(b"\x0a\x10")


@given(
    request_id=st.integers(0, 2**64 - 1),
    first_lsn=st.integers(0, 2**63 - 1),
    lsn=st.integers(0, 2**63 - 1),
)
def test_hand_encoded_write_reply_is_byte_identical(
    request_id: int, first_lsn: int, lsn: int
) -> None:
    expected = pb.Response(
        request_id=request_id, write=pb.WriteResponse(lsn=lsn, first_lsn=first_lsn)
    ).SerializeToString()
    assert encode_write_reply(request_id, first_lsn, lsn) == expected


_ANSWER = st.tuples(
    st.integers(0, 2**64 - 1), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1),
    st.integers(0, 2**32 - 1),
)  # fmt: skip


@given(st.lists(_ANSWER, min_size=1, max_size=40))
def test_hand_encoded_write_replies_are_byte_identical_and_split_back(
    answers: list[tuple[int, int, int, int]],
) -> None:
    gone = [a[3] for a in answers]
    expected = pb.Response(
        writes=pb.WriteReplies(
            request_ids=[a[0] for a in answers],
            first_lsns=[a[1] for a in answers],
            lsns=[a[2] for a in answers],
            deletes_absent=gone if any(gone) else [],
        )
    ).SerializeToString()
    frame = encode_write_replies(answers)
    assert frame == expected
    split = split_write_replies(decode_response(frame))
    assert [
        (r.request_id, r.write.first_lsn, r.write.lsn, r.write.deletes_absent) for r in split
    ] == answers


def test_write_replies_with_columns_of_other_lengths_are_refused() -> None:
    bad = pb.Response(writes=pb.WriteReplies(request_ids=[1, 2], first_lsns=[1], lsns=[1, 2]))
    with pytest.raises(WireError, match="2 request ids"):
        split_write_replies(bad)
