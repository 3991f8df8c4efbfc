"""Every message of the wire contract round-trips; decoders only ever raise ProtocolError.

Strategies are derived from the descriptors (not hand-written per message), so a field or
message added to the proto is covered without touching this file: scalars of every protobuf
type, enums (known values and, proto3 enums being open, unknown ones), repeated fields, maps,
nested and sub-messages, and oneofs (at most one member set, possibly an empty sub-message).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from kevo_repl import protogen
from kevo_repl.core.errors import ProtocolError
from kevo_repl.wire import (
    DEFAULT_LIMITS,
    decode_batch,
    decode_beacon,
    decode_request,
    decode_response,
    pb,
    split_stream_frame,
    validate_client_batch,
)

MAX_DEPTH = 3
FD = FieldDescriptor
FDP = descriptor_pb2.FieldDescriptorProto
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FD.TYPE_DOUBLE: st.floats(allow_nan=False),
    FD.TYPE_FLOAT: st.floats(width=32, allow_nan=False),
    FD.TYPE_INT32: INT32,
    FD.TYPE_SINT32: INT32,
    FD.TYPE_SFIXED32: INT32,
    FD.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FD.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FD.TYPE_INT64: INT64,
    FD.TYPE_SINT64: INT64,
    FD.TYPE_SFIXED64: INT64,
    FD.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FD.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_STRING: st.text(st.characters(codec="utf-8"), max_size=12),
    FD.TYPE_BYTES: st.binary(max_size=24),
}
ROUNDTRIP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def walk_messages(descriptors: Iterator[Descriptor]) -> Iterator[Descriptor]:
    for desc in descriptors:
        yield desc
        yield from walk_messages(iter(desc.nested_types))


ALL_MESSAGES = list(walk_messages(iter(pb.DESCRIPTOR.message_types_by_name.values())))


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def sub_message(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def value_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_MESSAGE:
        return messages(sub_message(field), depth + 1)
    if field.type == FD.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None, field.full_name
        known = st.sampled_from([v.number for v in enum.values])
        return known if enum.is_closed else known | INT32
    return SCALARS[field.type]


def set_field(msg: Message, field: FieldDescriptor, draw: Callable[..., Any], depth: int) -> None:
    name = field.name
    if is_map(field):
        entry = sub_message(field)
        key_f, value_f = entry.fields_by_name["key"], entry.fields_by_name["value"]
        items = draw(
            st.dictionaries(
                value_strategy(key_f, depth), value_strategy(value_f, depth), max_size=3
            )
        )
        for key, value in items.items():
            if value_f.type == FD.TYPE_MESSAGE:
                getattr(msg, name)[key].CopyFrom(value)
            else:
                getattr(msg, name)[key] = value
    elif field.is_repeated:
        values = draw(st.lists(value_strategy(field, depth), max_size=4))
        container = getattr(msg, name)
        for value in values:
            if field.type == FD.TYPE_MESSAGE:
                container.add().CopyFrom(value)
            else:
                container.append(value)
    elif field.type == FD.TYPE_MESSAGE:
        sub = getattr(msg, name)
        sub.SetInParent()  # present even when the drawn sub-message is empty
        sub.CopyFrom(draw(value_strategy(field, depth)))
    else:
        setattr(msg, name, draw(value_strategy(field, depth)))


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type ``desc`` with any subset of fields set, from the descriptor alone."""
    cls = message_factory.GetMessageClass(desc)

    @st.composite
    def build(draw: Callable[..., Any]) -> Message:
        msg = cls()
        if depth >= MAX_DEPTH:
            return msg
        for field in desc.fields:
            if field.containing_oneof is None and draw(st.booleans()):
                set_field(msg, field, draw, depth)
        for oneof in desc.oneofs:
            chosen = draw(st.none() | st.sampled_from(list(oneof.fields)))
            if chosen is not None:
                set_field(msg, chosen, draw, depth)
        return msg

    return build()


def test_walker_sees_every_message_in_the_proto() -> None:
    source = (protogen.PROTO_ROOT / protogen.PROTO_FILE).read_text()
    declared = set(re.findall(r"^\s*message\s+(\w+)", source, re.MULTILINE))
    assert {d.name for d in ALL_MESSAGES} == declared
    assert len(declared) >= 20  # not vacuous


@pytest.mark.parametrize("desc", ALL_MESSAGES, ids=lambda d: d.full_name)
@ROUNDTRIP
@given(data=st.data())
def test_every_message_roundtrips(desc: Descriptor, data: st.DataObject) -> None:
    msg = data.draw(messages(desc))
    wire = msg.SerializeToString()
    parsed = type(msg).FromString(wire)
    assert parsed == msg
    assert parsed.SerializeToString(deterministic=True) == msg.SerializeToString(deterministic=True)
    for oneof in desc.oneofs:
        assert parsed.WhichOneof(oneof.name) == msg.WhichOneof(oneof.name)


@ROUNDTRIP
@given(data=st.data())
def test_oneof_bodies_are_all_reachable(data: st.DataObject) -> None:
    for cls in (pb.Request, pb.Response):
        field = data.draw(st.sampled_from(list(cls.DESCRIPTOR.oneofs_by_name["body"].fields)))
        msg = cls()
        set_field(msg, field, data.draw, 0)
        assert cls.FromString(msg.SerializeToString()).WhichOneof("body") == field.name


def add_field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    ftype: int,
    *,
    type_name: str = "",
    repeated: bool = False,
    oneof_index: int | None = None,
) -> None:
    field = msg.field.add(name=name, number=number, type=cast("FDP.Type.ValueType", ftype))
    field.label = FDP.LABEL_REPEATED if repeated else FDP.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    if oneof_index is not None:
        field.oneof_index = oneof_index


def synthetic_file() -> Any:
    """A proto3 file with what the real contract lacks (nested and recursive messages, maps,
    nested enums, every scalar type, a oneof with a message member), in a private pool: it
    proves the strategy builder itself, so the real messages are not its only test."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="kevo_test/selftest.proto", package="selftest", syntax="proto3"
    )
    outer = fdp.message_type.add(name="Outer")
    color = outer.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)
    inner = outer.nested_type.add(name="Inner")
    add_field(inner, "x", 1, FD.TYPE_SINT64)
    add_field(inner, "child", 2, FD.TYPE_MESSAGE, type_name=".selftest.Outer")
    entry = outer.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    add_field(entry, "key", 1, FD.TYPE_STRING)
    add_field(entry, "value", 2, FD.TYPE_MESSAGE, type_name=".selftest.Outer.Inner")
    add_field(
        outer, "labels", 1, FD.TYPE_MESSAGE, type_name=".selftest.Outer.LabelsEntry", repeated=True
    )
    add_field(outer, "inners", 2, FD.TYPE_MESSAGE, type_name=".selftest.Outer.Inner", repeated=True)
    add_field(outer, "colors", 3, FD.TYPE_ENUM, type_name=".selftest.Outer.Color", repeated=True)
    add_field(outer, "blobs", 4, FD.TYPE_BYTES, repeated=True)
    for number, ftype in enumerate(sorted(SCALARS), start=10):
        add_field(outer, f"s{ftype}", number, ftype)
    outer.oneof_decl.add(name="choice")
    add_field(outer, "pick_f", 40, FD.TYPE_DOUBLE, oneof_index=0)
    add_field(
        outer, "pick_m", 41, FD.TYPE_MESSAGE, type_name=".selftest.Outer.Inner", oneof_index=0
    )
    return descriptor_pool.DescriptorPool().AddSerializedFile(fdp.SerializeToString())


SELFTEST = synthetic_file()
SELFTEST_MESSAGES = list(walk_messages(iter(SELFTEST.message_types_by_name.values())))


def test_walker_descends_into_nested_types() -> None:
    names = {d.full_name for d in SELFTEST_MESSAGES}
    assert names == {"selftest.Outer", "selftest.Outer.Inner", "selftest.Outer.LabelsEntry"}


@pytest.mark.parametrize("desc", SELFTEST_MESSAGES, ids=lambda d: d.full_name)
@ROUNDTRIP
@given(data=st.data())
def test_selftest_messages_roundtrip(desc: Descriptor, data: st.DataObject) -> None:
    msg = data.draw(messages(desc))
    assert type(msg).FromString(msg.SerializeToString()) == msg


def scalar_is_set(ftype: int) -> Callable[[Any], bool]:
    return lambda m: bool(getattr(m, f"s{ftype}"))


SHAPES: dict[str, Callable[[Any], bool]] = {
    "map of sub-messages": lambda m: any(v.HasField("child") for v in m.labels.values()),
    "recursion through nested": lambda m: any(i.child.inners for i in m.inners),
    "unknown open-enum value": lambda m: any(c not in (0, 1) for c in m.colors),
    "oneof message member": lambda m: m.WhichOneof("choice") == "pick_m",
    **{f"scalar type {t}": scalar_is_set(t) for t in SCALARS},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_strategy_reaches_every_shape(shape: str) -> None:
    outer = SELFTEST.message_types_by_name["Outer"]
    quick = settings(max_examples=1000, database=None, phases=[Phase.generate])
    find(messages(outer), SHAPES[shape], settings=quick)  # raises if never reached


def mutate(wire: bytes, data: st.DataObject) -> bytes:
    """Flip, insert, delete or truncate: parse paths random bytes alone rarely reach."""
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "insert" or not buf:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "flip":
            buf[min(pos, len(buf) - 1)] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "delete":
            del buf[pos : pos + 1]
        else:
            del buf[pos:]
    return bytes(buf)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "request": decode_request,
    "response": decode_response,
    "batch": decode_batch,
    "beacon": decode_beacon,
    "stream": split_stream_frame,
    "client_batch": lambda b: validate_client_batch(
        b,
        max_key_bytes=DEFAULT_LIMITS.max_key_bytes,
        max_value_bytes=DEFAULT_LIMITS.max_value_bytes,
        max_entries=DEFAULT_LIMITS.max_entries,
    ),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=150, deadline=None)
@given(frame=st.binary(max_size=96))
def test_decoders_on_arbitrary_bytes_raise_only_protocol_error(name: str, frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        DECODERS[name](frame)


@pytest.mark.parametrize(
    "desc", [pb.Request.DESCRIPTOR, pb.Response.DESCRIPTOR, pb.WalBatch.DESCRIPTOR]
)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_decoders_on_mutated_messages_raise_only_protocol_error(
    desc: Descriptor, data: st.DataObject
) -> None:
    frame = mutate(data.draw(messages(desc)).SerializeToString(), data)
    for decode in DECODERS.values():
        with contextlib.suppress(ProtocolError):
            decode(frame)
