"""Group commit by concatenation, and the rules a client batch must pass before it is sealed."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.core.errors import ProtocolError
from kevo_repl.wire import (
    DEFAULT_LIMITS,
    WireError,
    decode_batch,
    encode_client_batch,
    encode_single,
    pb,
    seal_batch,
    validate_client_batch,
)

HISTORY = bytes(range(16))
Entry = tuple[int, bytes, bytes]

entries = st.tuples(
    st.sampled_from([pb.OP_PUT, pb.OP_DELETE]),
    st.binary(min_size=1, max_size=12),
    st.binary(max_size=12),
).map(lambda e: (e[0], e[1], b"" if e[0] == pb.OP_DELETE else e[2]))
client_batches = st.lists(st.lists(entries, min_size=1, max_size=6), min_size=1, max_size=6)


def encode(batch: list[Entry]) -> bytes:
    ops, keys, values = zip(*batch, strict=True)
    return encode_client_batch(ops, keys, values)


def validate(payload: bytes, **limits: int) -> int:
    kwargs = {
        "max_key_bytes": DEFAULT_LIMITS.max_key_bytes,
        "max_value_bytes": DEFAULT_LIMITS.max_value_bytes,
        "max_entries": DEFAULT_LIMITS.max_entries,
    }
    return validate_client_batch(payload, **(kwargs | limits))


@settings(max_examples=60, deadline=None)
@given(client_batches, st.binary(min_size=16, max_size=16), st.integers(1, 2**63 - 1))
def test_sealed_batch_is_all_entries_in_order(
    batches: list[list[Entry]], history_id: bytes, commit_time_us: int
) -> None:
    payloads = [encode(b) for b in batches]
    assert [validate(p) for p in payloads] == [len(b) for b in batches]
    sealed = seal_batch(payloads, history_id, commit_time_us)
    assert sealed.startswith(b"".join(payloads))  # entries are never re-encoded
    flat = [e for b in batches for e in b]
    ops, keys, values = (list(col) for col in zip(*flat, strict=True))
    got = decode_batch(sealed)
    assert (list(got.ops), list(got.keys), list(got.values)) == (ops, keys, values)
    assert (got.history_id, got.commit_time_us) == (history_id, commit_time_us)
    whole = pb.WalBatch(
        ops=cast("list[pb.Op.ValueType]", ops),
        keys=keys,
        values=values,
        history_id=history_id,
        commit_time_us=commit_time_us,
    )
    assert got == whole  # merge of the parts == one batch built from all entries


def test_packed_enum_runs_concatenate() -> None:
    a = encode([(pb.OP_PUT, b"a", b"1"), (pb.OP_DELETE, b"b", b"")])
    b = encode([(pb.OP_DELETE, b"c", b""), (pb.OP_PUT, b"d", b"4")])
    assert a[:3] == b"\x0a\x02\x01"  # field 1, length-delimited: ops are packed
    assert b[:3] == b"\x0a\x02\x02"
    got = decode_batch(seal_batch([a, b], HISTORY, 7))
    assert list(got.ops) == [pb.OP_PUT, pb.OP_DELETE, pb.OP_DELETE, pb.OP_PUT]
    assert got.SerializeToString().count(b"\x0a\x04\x01\x02\x02\x01") == 1  # one run again


def test_unpacked_ops_from_another_encoder_merge_too() -> None:
    unpacked = b"\x08\x02" + b"\x12\x01x" + b"\x1a\x00"  # op DELETE as a bare varint
    assert validate(unpacked) == 1
    packed = encode([(pb.OP_PUT, b"y", b"v")])
    got = decode_batch(seal_batch([unpacked, packed], HISTORY, 1))
    assert list(got.ops) == [pb.OP_DELETE, pb.OP_PUT]
    assert list(got.keys) == [b"x", b"y"]


def test_suffix_wins_over_earlier_scalars() -> None:
    sneaky = pb.WalBatch(ops=[pb.OP_PUT], keys=[b"k"], values=[b"v"], history_id=b"x" * 16)
    got = decode_batch(seal_batch([sneaky.SerializeToString()], HISTORY, 5))
    assert got.history_id == HISTORY


def test_seal_refuses_local_misuse() -> None:
    with pytest.raises(ValueError, match="no client payloads"):
        seal_batch([], HISTORY, 1)
    with pytest.raises(ValueError, match="16 bytes"):
        seal_batch([encode([(pb.OP_PUT, b"k", b"")])], b"short", 1)


def test_encode_refuses_ragged_columns() -> None:
    with pytest.raises(ValueError, match="columns differ"):
        encode_client_batch([pb.OP_PUT], [b"k", b"j"], [b"v"])


# ---- validate_client_batch: one test per rule -------------------------------------------


def rejects(payload: bytes, match: str, code: int = pb.ERROR_BAD_REQUEST, **limits: int) -> None:
    with pytest.raises(WireError, match=match) as info:
        validate(payload, **limits)
    assert isinstance(info.value, ProtocolError)
    assert info.value.code == code


def test_accepts_puts_deletes_and_empty_values() -> None:
    ok = encode([(pb.OP_PUT, b"k", b""), (pb.OP_DELETE, b"k", b""), (pb.OP_PUT, b"j", b"v")])
    assert validate(ok) == 3


def test_rejects_unparsable() -> None:
    rejects(b"\x0a\xff\xff", "not a valid protobuf")


def test_rejects_zero_entries() -> None:
    rejects(b"", "no entries")


def test_rejects_ragged_columns() -> None:
    ragged = pb.WalBatch(ops=[pb.OP_PUT, pb.OP_PUT], keys=[b"a"], values=[b"1", b"2"])
    rejects(ragged.SerializeToString(), "2 ops, 1 keys, 2 values")


def test_rejects_unspecified_op() -> None:
    rejects(
        encode([(pb.OP_PUT, b"a", b""), (pb.OP_UNSPECIFIED, b"b", b"")]), "entry 1: unknown op 0"
    )


def test_rejects_unknown_op() -> None:
    rejects(encode([(7, b"a", b"")]), "entry 0: unknown op 7")


def test_rejects_empty_key() -> None:
    rejects(encode([(pb.OP_PUT, b"a", b""), (pb.OP_PUT, b"", b"v")]), "entry 1: empty key")


def test_rejects_oversize_key() -> None:
    batch = encode([(pb.OP_PUT, b"a", b""), (pb.OP_PUT, b"k" * 9, b"")])
    rejects(
        batch, "entry 1: key of 9 bytes, over the limit of 8", pb.ERROR_TOO_LARGE, max_key_bytes=8
    )


def test_rejects_oversize_value() -> None:
    batch = encode([(pb.OP_PUT, b"a", b"v" * 9)])
    rejects(batch, "entry 0: value of 9 bytes", pb.ERROR_TOO_LARGE, max_value_bytes=8)


def test_rejects_delete_with_value() -> None:
    rejects(encode([(pb.OP_PUT, b"a", b"1"), (pb.OP_DELETE, b"b", b"2")]), "entry 1: a delete")


def test_rejects_client_history_id() -> None:
    batch = pb.WalBatch(ops=[pb.OP_PUT], keys=[b"k"], values=[b"v"], history_id=HISTORY)
    rejects(batch.SerializeToString(), "set by the primary")


def test_rejects_client_commit_time() -> None:
    batch = pb.WalBatch(ops=[pb.OP_PUT], keys=[b"k"], values=[b"v"], commit_time_us=1)
    rejects(batch.SerializeToString(), "set by the primary")


def test_rejects_too_many_entries() -> None:
    batch = encode([(pb.OP_PUT, bytes([i]), b"") for i in range(1, 6)])
    rejects(batch, "5 entries, over the limit of 4", pb.ERROR_TOO_LARGE, max_entries=4)


def test_rejects_unknown_fields() -> None:
    rejects(encode([(pb.OP_PUT, b"k", b"")]) + b"\x98\x06\x01", "unknown fields")


def test_decode_batch_rejects_what_a_replica_cannot_apply() -> None:
    with pytest.raises(WireError, match="not a valid protobuf"):
        decode_batch(b"\x12\x05ab")
    with pytest.raises(WireError, match="columns differ"):
        decode_batch(pb.WalBatch(keys=[b"k"]).SerializeToString())
    with pytest.raises(WireError, match="unknown op"):
        decode_batch(encode([(9, b"k", b"")]))


@given(
    op=st.sampled_from([pb.OP_PUT, pb.OP_DELETE]),
    key=st.binary(min_size=1, max_size=300),
    value=st.binary(max_size=20_000),
)
def test_encode_single_is_byte_identical_to_the_message(op: int, key: bytes, value: bytes) -> None:
    assert encode_single(op, key, value) == encode_client_batch([op], [key], [value])
