"""zstd frames from peers: bounded inflation, clear refusals, and --compression's choices."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.core.errors import ProtocolError
from kevo_repl.wire import pb
from kevo_repl.wire.compression import deflate, deflate_checked, inflate, parse_codec

LIMIT = 256 * 1024


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096), st.booleans())
def test_what_is_deflated_inflates_back(data: bytes, checked: bool) -> None:
    frame = deflate_checked(data) if checked else deflate(data)
    assert inflate(frame, max(len(data), 1), "test") == data


def test_a_frame_claiming_more_than_the_limit_is_refused_before_inflating() -> None:
    bomb = deflate(b"\x00" * (10 * 1024 * 1024))  # 10 MiB in ~330 bytes, its size in the header
    assert len(bomb) < 2048
    with pytest.raises(ProtocolError, match="claims 10485760 bytes, over the limit of 262144"):
        inflate(bomb, LIMIT, "stream record")


def test_a_frame_without_its_size_stops_at_the_limit() -> None:
    sizeless = zstandard.ZstdCompressor(write_content_size=False)
    bomb = sizeless.compress(b"\x00" * (10 * 1024 * 1024))
    with pytest.raises(ProtocolError, match=r"stream record: compressed frame refused .*262144"):
        inflate(bomb, LIMIT, "stream record")
    fits = sizeless.compress(b"x" * LIMIT)
    assert inflate(fits, LIMIT, "stream record") == b"x" * LIMIT


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "not a zstd frame"),
        (b"not zstd at all", "not a zstd frame"),
        (deflate(b"hello " * 100)[:-3], "refused"),  # truncated
        (deflate(b"hello " * 100) + b"more", "unused data"),  # trailing bytes
    ],
)
def test_damaged_frames_are_protocol_errors(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        inflate(frame, LIMIT, "WalSync reply")


def test_a_checksummed_frame_finds_a_flipped_bit() -> None:
    frame = bytearray(deflate_checked(bytes(range(256)) * 64))
    frame[len(frame) // 2] ^= 0x10
    with pytest.raises(ProtocolError, match="bootstrap chunk"):
        inflate(bytes(frame), LIMIT, "bootstrap chunk")


@pytest.mark.parametrize(
    ("text", "host", "codec"),
    [
        ("auto", "127.0.0.1", pb.CODEC_NONE),
        ("auto", "localhost", pb.CODEC_NONE),
        ("auto", "[::1]", pb.CODEC_NONE),
        ("auto", "10.1.2.3", pb.CODEC_ZSTD),
        ("auto", "db.example.net", pb.CODEC_ZSTD),
        ("zstd", "127.0.0.1", pb.CODEC_ZSTD),
        ("none", "10.1.2.3", pb.CODEC_NONE),
    ],
)
def test_compression_choice(text: str, host: str, codec: int) -> None:
    assert parse_codec(text, host) == codec


def test_an_unknown_codec_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose zstd, none or auto"):
        parse_codec("lz4", "10.0.0.1")
