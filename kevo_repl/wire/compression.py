"""zstd for what crosses a slow link: stream records, WalSync replies, bootstrap chunks.

What is stored never changes: the WAL keeps uncompressed records and their crc32c covers the
uncompressed bytes, so a follower checks every record after inflating it, whatever path it
came by. Compression is negotiated per follower (``RegisterRequest.compression``) and per
request (``WalSyncRequest.compression``, ``BootstrapRequest.compression``).

A peer's frame is never trusted to say how big it inflates: :func:`inflate` refuses a frame
whose header claims more than the caller's limit before inflating anything (python-zstandard
would otherwise allocate what the header claims, ignoring ``max_output_size``), and inflates
a frame without a size into a buffer of exactly the limit, so a compression bomb stops there.

zstandard is imported on first use: a node that never compresses does not carry it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Final

from kevo_repl.core.errors import ProtocolError
from kevo_repl.wire import pb

if TYPE_CHECKING:
    from kevo_repl.wire.batch import BytesLike

__all__ = [
    "CODEC_NAMES",
    "LEVEL",
    "codec_for",
    "codec_name",
    "deflate",
    "deflate_checked",
    "inflate",
    "parse_codec",
]

LEVEL: Final = 1  # docs/benchmarks.md "Compressing WAL records": level 3 buys ~5% for 2x CPU
CODEC_NAMES: Final = {"none": pb.CODEC_NONE, "zstd": pb.CODEC_ZSTD}


@cache
def _zstd() -> Any:
    import zstandard

    return zstandard


@cache
def _compressor(checked: bool) -> Any:
    return _zstd().ZstdCompressor(level=LEVEL, write_checksum=checked)


@cache
def _decompressor() -> Any:
    return _zstd().ZstdDecompressor()


def parse_codec(text: str, upstream_host: str) -> pb.Codec.ValueType:
    """``--compression zstd|none|auto``: auto is zstd unless the upstream is on loopback
    (where bandwidth is free and compressing only costs CPU). ``ValueError`` names the
    choices for anything else."""
    if text == "auto":
        return pb.CODEC_NONE if _is_loopback(upstream_host) else pb.CODEC_ZSTD
    if text not in CODEC_NAMES:
        raise ValueError(f"compression {text!r}: choose zstd, none or auto")
    return CODEC_NAMES[text]


def _is_loopback(host: str) -> bool:
    import ipaddress  # once per upstream, and only by a replica

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: assume a real network


def codec_name(codec: int) -> str:
    return "zstd" if codec == pb.CODEC_ZSTD else "none"


def codec_for(asked: int) -> pb.Codec.ValueType:
    """What this node answers a follower that asked for ``asked``: zstd or nothing (a newer
    peer asking for a codec we do not know gets uncompressed data, never an error)."""
    return pb.CODEC_ZSTD if asked == pb.CODEC_ZSTD else pb.CODEC_NONE


def deflate(data: BytesLike) -> bytes:
    """One zstd frame holding ``data`` (its size in the header); for stream records, whose
    own crc32c checks them after inflating."""
    return bytes(_compressor(False).compress(data))


def deflate_checked(data: BytesLike) -> bytes:
    """As :func:`deflate` with zstd's content checksum: for replies with no crc of their own
    (bootstrap chunks), so damage is found, not applied."""
    return bytes(_compressor(True).compress(data))


def inflate(frame: BytesLike, limit: int, what: str) -> bytes:
    """The bytes of one zstd frame from a peer, at most ``limit`` of them.

    Raises ``ProtocolError`` naming ``what`` for a frame that is not zstd, is damaged, holds
    trailing data, or would inflate past ``limit`` (checked before inflating when the header
    gives the size; a frame without one stops at ``limit``).
    """
    zstandard = _zstd()
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"{what}: not a zstd frame ({exc})") from exc
    size = params.content_size
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > limit:
        raise ProtocolError(
            f"{what}: compressed frame claims {size} bytes, over the limit of {limit}"
        )
    try:
        out = _decompressor().decompress(frame, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ProtocolError(
            f"{what}: compressed frame refused ({exc}; limit {limit} bytes)"
        ) from exc
    if len(out) > limit:  # defensive: the header was checked above
        raise ProtocolError(f"{what}: inflates to {len(out)} bytes, over the limit of {limit}")
    return bytes(out)
