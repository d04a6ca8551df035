"""The codec: every registered message round-trips; bad bytes raise CodecError and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peer_node  # noqa: F401  (registers the test message types)
from e2actors import ActorRef, CodecError
from e2actors.runtime import codec
from e2actors.runtime.messages import GetNodeInfo, NodeInfo, NodeLost, NodeUp, Spawn, StopActor, Terminated, Tick
from e2actors.nf.messages import (ExportState, GetStats, ImportState, LoadReport, NFBatch, NFOutput, StreamVerdicts,
                                  StreamWork)
from e2actors.nf.pipelet import Verdict
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet
from e2actors.manager.control import ApplyPolicy, GetStatus
from e2actors.manager.shardhost import MergeParts, StartShards
from e2actors.nf.messages import FinalStats, InputDone
from e2actors.switch.messages import CloseInputs, Credit, SwitchLoad, Drained, GetSwitchStats, GetTraces, RemoteBatch, SetTable
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable
from nfkit import connection
from peer_node import Forward, Ping, Pong

REF = ActorRef("tcp://127.0.0.1:7000", "echo")
_PKTS = connection()
_PKTS[3].meta.update({"verdict": "unsafe", "sid": 1001, "trace": [[1.5, "in"]]})
_PKTS[3].origin = 7
_BATCH = Batch(_PKTS)
_TABLE = SwitchTable(
    3, "s1", (PortSpec("in", "pcap-in", {"path": "/tmp/x.pcap", "speed": 0}),),
    (GroupSpec("ids", (Member("ids#0", "s1", REF), Member("ids#1", "s2", None, 2.0, "draining")),
               "flow", "bytestream", False, "e2actors.nf.builtin.ids:IDS", {"rules": ["a"]}, ("safe", "unsafe")),),
    (Route("port:in", "tcp port 80", "nf:ids", "in->ids"),), {"s1": REF}, {"in": "s1"})

# One sample per registered type. A new registered type without a sample fails the test below,
# so every message type is round-tripped.
SAMPLES = [
    Terminated(REF, "stopped"),
    NodeLost("tcp://127.0.0.1:7000", "no heartbeat for 3.0s"),
    NodeUp("unix:///tmp/x.sock"),
    Spawn("e2actors.runtime.node:SystemActor", "x", {"a": 1, "b": (1, 2), "c": b"\x00\xff"}),
    StopActor("x"),
    NodeInfo("tcp://127.0.0.1:1", "n", "0.1.0", 42, 2, ("a", "b")),
    GetNodeInfo(),
    Tick("t"),
    Forward(REF, Ping(3, REF)),
    Ping(7, None),
    Pong(1, "peer"),
    _PKTS[3],
    _BATCH,
    NFBatch(_BATCH, 4),
    NFOutput("ids#0", 4, (("safe", _BATCH),), 1, 0, "", ((1, 30), (2, 1))),
    StreamWork(3, ((1, _PKTS[0].flow_key, 0, b"GET /", (_PKTS[0],)), (2, _PKTS[0].flow_key, 1, 40, ()),
                   (3, _PKTS[0].flow_key, -1, "fin", ())), 5, 900, (("safe", 4),), (("sid 1", 1),), REF),
    StreamVerdicts("ids#0", 3, (None, "safe", Verdict(port="unsafe", meta={"sid": 1}, reason="sid 1"))),
    Verdict(drop=True, reason="r", sticky=False),
    LoadReport("ids#0", "ids", 1.5, 12e6, 3, 0, 0.25, 10, 0, 100, 1.7e9),
    ExportState(),
    ImportState({"flows": [[[6, b"\x01", 1, b"\x02", 2, []], 1, 0.5]]}),
    GetStats(),
    PortSpec("out", "pcap-out", {"path": "/tmp/o.pcap"}),
    Member("ids#0", "s1", REF),
    _TABLE.groups[0],
    _TABLE.routes[0],
    _TABLE,
    SetTable(_TABLE),
    RemoteBatch("inst:ids#0", _BATCH, "port:in"),
    GetSwitchStats(),
    Drained("ids", "ids#1", "s2"),
    GetTraces(True),
    Credit(((1, 250), (2, 3))),
    CloseInputs(),
    StartShards(("s1.2", "s1.3"), 2),
    MergeParts("out.pcap", ("s1", "s1.2")),
    InputDone(),
    ApplyPolicy("name: x\n", "p.yaml", "/tmp", True),
    FinalStats("ids#1", {"packets_in": 3, "error_list": [{"type": "ValueError"}]}),
    GetStatus(),
    SwitchLoad("s1", (("ids#0", 120),), (("ids#0", 4),)),
]


def _same(a: object, b: object) -> bool:
    if isinstance(a, Packet):
        return isinstance(b, Packet) and (a.data, a.ts, a.wirelen, a.port, a.meta_if_any or None, a.origin) == \
            (b.data, b.ts, b.wirelen, b.port, b.meta_if_any or None, b.origin)
    if isinstance(a, Batch):
        return isinstance(b, Batch) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_every_registered_type_has_a_sample_and_round_trips() -> None:
    sampled = {type(s) for s in SAMPLES}
    missing = [c.__qualname__ for c in codec.registered().values() if c not in sampled]
    assert not missing, f"add a sample for {missing}"
    for s in SAMPLES:
        assert _same(codec.decode(codec.encode(s)), s), s
        frame = codec.encode_frame(0, "target", None, s)
        (n,) = struct.unpack(">I", frame[:4])
        assert n == len(frame) - 4
        kind, a, b, back = codec.decode_frame_body(frame[4:])
        assert (kind, a, b) == (0, "target", None) and _same(back, s)


def test_frames_decode_to_named_fields_and_keep_their_bytes() -> None:
    import msgpack

    from e2actors.runtime.transport import ASK, HELLO, REPLY, TELL

    for kind, target, arg, msg in [(TELL, "sink", None, Pong(1, "x")), (ASK, "echo", 42, ("a", 1)),
                                   (REPLY, 42, False, ("ActorStopped", "gone")), (HELLO, "tcp://198.18.0.1:1", "0.1.0", "n")]:
        frame = codec.encode_frame(kind, target, arg, msg)
        f = codec.decode_frame_body(frame[4:])
        assert isinstance(f, codec.Frame) and f == (kind, target, arg, msg)
        assert type(codec.decode_frame(frame[4:])) is tuple and codec.decode_frame(frame[4:]) == f  # hot path
        assert (f.kind, f.target, f.arg) == (kind, target, arg) and _same(f.message, msg)
        # The wire is the plain array it always was: [kind, target, arg, tag, payload].
        tag = 1003 if isinstance(msg, Pong) else None
        payload = [msg.n, msg.by] if isinstance(msg, Pong) else (list(msg) if isinstance(msg, tuple) else msg)
        assert msgpack.unpackb(frame[4:]) == [kind, target, arg, tag, payload]


def test_messages_encode_as_arrays_not_maps() -> None:
    import msgpack

    body = codec.encode_frame(0, "t", None, Pong(1, "x"))[4:]
    assert msgpack.unpackb(body) == [0, "t", None, 1003, [1, "x"]]  # no field names on the wire


def test_refs_round_trip_and_compare_by_value() -> None:
    r = codec.decode(codec.encode(REF))
    assert r == REF and hash(r) == hash(REF) and r is not REF


def test_plain_values_and_bytes() -> None:
    v = {"k": [1, 2.5, None, True, "s", b"\x00\x01"], 3: "int key"}
    out = codec.decode(codec.encode(v))
    assert out == {"k": (1, 2.5, None, True, "s", b"\x00\x01"), 3: "int key"}
    assert type(out["k"][5]) is bytes


def test_unregistered_type_is_a_codec_error() -> None:
    class Nope:
        pass

    with pytest.raises(CodecError, match="register"):
        codec.encode(Nope())
    with pytest.raises(CodecError):
        codec.encode_frame(0, "t", None, Nope())


def test_unknown_tag_and_wrong_fields() -> None:
    import msgpack

    with pytest.raises(CodecError, match="unknown message tag"):
        codec.decode_frame_body(msgpack.packb([0, "t", None, 999_999, []]))
    with pytest.raises(CodecError, match="fields"):
        codec.decode_frame_body(msgpack.packb([0, "t", None, 1003, [1, 2, 3, 4]]))
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb(msgpack.ExtType(77, b"x")))


def test_fields_of_the_wrong_type_are_refused_at_decode() -> None:
    import msgpack

    def body(tag: int, fields: list) -> bytes:
        return msgpack.packb([0, "t", None, tag, fields])

    with pytest.raises(CodecError, match=r"Pong\.n: str"):
        codec.decode_frame_body(body(1003, ["1", "x"]))
    with pytest.raises(CodecError, match=r"Pong\.n: bool"):  # (a bool is not an int, as in msgspec)
        codec.decode_frame_body(body(1003, [True, "x"]))
    with pytest.raises(CodecError, match=r"StreamVerdicts\.seq"):
        codec.decode_frame_body(body(207, ["ids#0", "3", []]))
    with pytest.raises(CodecError, match=r"Credit\.credits"):
        codec.decode_frame_body(body(325, [[[1, "many"]]]))
    with pytest.raises(CodecError, match=r"Credit\.credits"):
        codec.decode_frame_body(body(325, [[[1, 2, 3]]]))  # pairs, not triples
    with pytest.raises(CodecError, match=r"Member\.ref"):  # a nested message checks its own fields
        codec.decode(codec.encode(Member("ids#0", "s1", None)).replace(b"\xc0", b"\x07"))
    with pytest.raises(CodecError, match=r"Verdict\.meta"):
        codec.decode(msgpack.packb(msgpack.ExtType(codec.EXT_MESSAGE, msgpack.packb([208, None, False, [], "", True]))))
    # what the annotations allow passes: an int for a float, None for an optional ref, any answers
    assert codec.decode_frame_body(body(202, ["ids#0", "ids", 1, 2, 3, 0, 0, 10, 0, 100, 5]))[3].pps == 1
    assert codec.decode_frame_body(body(207, ["ids#0", 3, [None, "safe", 1.5]]))[3].answers == (None, "safe", 1.5)


def test_every_registered_field_has_a_check() -> None:
    """Every field of every registered message is checked at decode, except those declared Any."""
    import typing

    unchecked = []
    for cls in codec.registered().values():
        if not hasattr(cls, "__dataclass_fields__") or cls in (Packet, Batch):
            continue  # (custom encoders: their decoders check their own fields)
        hints = typing.get_type_hints(cls)
        for name, check in zip(cls.__dataclass_fields__, codec.field_checks(cls)):
            if check is None and hints[name] is not typing.Any:
                unchecked.append(f"{cls.__qualname__}.{name}: {hints[name]}")
    assert not unchecked, unchecked


def test_type_checks() -> None:
    from typing import Any, Literal

    c = codec.type_check
    assert c(Any) is None and c(int)(1) and not c(int)(1.0) and c(float)(1) and not c(float)("1")
    assert c(int | None)(None) and c(int | None)(2) and not c(int | None)("2")
    assert c(tuple[int, ...])((1, 2)) and not c(tuple[int, ...])((1, "2")) and c(list[int])((1,))
    assert c(tuple[str, int])(("a", 1)) and not c(tuple[str, int])(("a", 1, 2)) and not c(tuple[str, int])((1, "a"))
    assert c(dict[str, int])({"a": 1}) and not c(dict[str, int])({1: 1}) and c(dict[str, Any])({"a": object()})
    assert c(Literal["a", "b"])("a") and not c(Literal["a", "b"])("c")
    assert c(ActorRef)(REF) and not c(ActorRef)(("n", "x"))
    assert c(int | str)("x") and not c(int | str)(None)


def test_oversized_frame_refused_on_both_sides() -> None:
    with pytest.raises(CodecError, match="over the limit"):
        codec.encode_frame(0, "t", None, b"x" * 2000, max_frame=1000)
    dec = codec.FrameDecoder(max_frame=1000)
    with pytest.raises(CodecError, match="over the limit"):
        dec.feed(struct.pack(">I", 1001))


def test_duplicate_tag_refused() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Other:
        x: int

    with pytest.raises(ValueError, match="already registered"):
        codec.register(Other, 1002)


@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=20), st.data())
@settings(max_examples=100, deadline=None, derandomize=True)
def test_frame_decoder_any_chunking(msgs: list, data: st.DataObject) -> None:
    stream = b"".join(codec.encode_frame(0, "t", i, m) for i, m in enumerate(msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = codec.FrameDecoder()
    out = []
    prev = 0
    for c in cuts + [len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    got = [codec.decode_frame_body(b)[3] for b in out]
    assert len(got) == len(msgs) and all(_same(g, m) for g, m in zip(got, msgs))
    assert dec.buffered == 0


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_bodies_raise_only_codec_error(body: bytes) -> None:
    try:
        codec.decode_frame_body(body)
    except CodecError:
        pass


@given(st.sampled_from(SAMPLES), st.data())
@settings(max_examples=300, deadline=None, derandomize=True)
def test_mutated_frames_raise_only_codec_error(msg: object, data: st.DataObject) -> None:
    body = bytearray(codec.encode_frame(0, "t", None, msg)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    try:
        codec.decode_frame_body(bytes(body[:cut]))
    except CodecError:
        pass
