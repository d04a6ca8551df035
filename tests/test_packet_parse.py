"""The Packet parser: one test per header, the malformed cases, flow keys, and property tests."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2actors.packet.batch import MAX_BATCH, Batch, batched
from e2actors.packet.build import arp_frame, echo_rest, ether, icmp, icmp6, ipv4, ipv6, tcp, udp
from e2actors.packet.packet import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    Packet,
    format_addr,
    parse_addr,
)

A, B = "198.18.0.1", "198.19.7.9"
A6, B6 = "2001:db8::1", "2001:db8:1::2"
a, b = parse_addr(A), parse_addr(B)


def tcp4(sport=40000, dport=80, payload=b"", flags="S", **kw) -> bytes:
    return ether(ipv4(A, B, 6, tcp(A, B, sport, dport, flags=flags, payload=payload, seq=7, ack=9)), **kw)


# --- headers -----------------------------------------------------------------------------------
def test_ethernet_ipv4_tcp() -> None:
    f = tcp4(payload=b"hello", flags="PA")
    p = Packet(f, ts=1.5, port="eth0")
    assert not p.malformed and p.reason is None
    assert p.ts == 1.5 and p.port == "eth0" and p.wirelen == len(f)
    assert p.eth_dst == f[:6] and p.eth_src == f[6:12]
    assert p.ethertype == 0x0800 and p.vlans == () and p.ip_version == 4
    assert (p.l3_offset, p.l4_offset, p.payload_offset, p.payload_len) == (14, 34, 54, 5)
    assert (p.proto, p.src, p.dst, p.sport, p.dport) == (6, a, b, 40000, 80)
    assert p.tcp_flags == TCP_PSH | TCP_ACK and p.tcp_seq == 7 and p.tcp_ack == 9
    assert p.tcp_data_offset == 20 and p.payload == b"hello"
    assert p.ttl == 64 and p.src_str == A and p.dst_str == B
    assert p.meta == {} and p.icmp_type == -1


def test_ipv4_options_and_tcp_options() -> None:
    seg = tcp(A, B, 1, 2, flags="S", options=b"\x02\x04\x05\xb4\x01\x01\x04\x02", payload=b"xy")
    p = Packet(ether(ipv4(A, B, 6, seg, options=b"\x94\x04\x00\x00")))  # router alert
    assert p.ip_header_len == 24 and p.l4_offset == 38 and p.tcp_data_offset == 28
    assert p.payload_offset == 66 and p.payload == b"xy" and p.tcp_flags == TCP_SYN


def test_ethernet_padding_is_trimmed_not_malformed() -> None:
    f = tcp4(flags="A") + b"\0" * 6  # 54 bytes padded to 60 by the NIC
    p = Packet(f)
    assert not p.malformed and p.payload_len == 0 and p.payload == b""
    u = Packet(ether(ipv4(A, B, 17, udp(A, B, 53, 53, b"q"))) + b"\xee" * 10)
    assert not u.malformed and u.payload == b"q"


def test_vlan_stacked_and_qinq() -> None:
    p = Packet(tcp4(vlans=(100, 200), outer_tpid=0x88A8))
    assert p.vlans == (100, 200) and p.ethertype == 0x0800 and p.l3_offset == 22 and p.dport == 80
    q = Packet(tcp4(vlans=(5,)))
    assert q.vlans == (5,) and q.l3_offset == 18


def test_arp() -> None:
    p = Packet(arp_frame(1, "02:00:00:00:00:aa", A, tpa=B))
    assert p.ethertype == 0x0806 and p.arp_op == 1 and p.src == a and p.dst == b
    assert p.arp_sha == bytes.fromhex("0200000000aa") and p.proto == -1 and p.sport == -1
    assert p.flow_key[0] == -0x0806 - 1  # non-IP keys cannot collide with IP ones


def test_ipv4_fragments() -> None:
    first = Packet(ether(ipv4(A, B, 17, udp(A, B, 5, 6, b"x" * 40)[:24], mf=True, ident=7)))
    assert first.more_fragments and first.frag_offset == 0 and first.sport == 5 and first.l4_offset == 34
    later = Packet(ether(ipv4(A, B, 17, b"y" * 24, frag_offset=24, ident=7)))
    assert not later.malformed and later.frag_offset == 24 and not later.more_fragments
    assert later.l4_offset == -1 and later.sport == -1 and later.payload_offset == 34 and later.payload_len == 24
    assert later.proto == 17 and later.is_fragment
    # every piece of a datagram shares one flow key
    assert first.flow_key == later.flow_key


def test_ipv6_extension_headers() -> None:
    seg = tcp(A6, B6, 443, 50000, flags="SA")
    ext = ((0, b"\x01\x04\0\0\0\0"), (43, b"\0\0" + b"\0" * 4 + parse_addr("2001:db8::9")), (60, b""))
    p = Packet(ether(ipv6(A6, B6, 6, seg, ext=ext)))
    assert not p.malformed, p.reason
    assert p.ip_version == 6 and p.proto == 6 and p.sport == 443 and p.dport == 50000
    assert p.l4_offset == 14 + 40 + 8 + 24 + 8
    assert p.src == parse_addr(A6) and format_addr(p.dst) == B6


def test_ipv6_fragment_header() -> None:
    first = Packet(ether(ipv6(A6, B6, 17, udp(A6, B6, 1, 2, b"z" * 20), ext=((44, b"\x00\x01\0\0\0\x09"),))))
    assert first.more_fragments and first.frag_offset == 0 and first.sport == 1
    later = Packet(ether(ipv6(A6, B6, 17, b"q" * 16, ext=((44, b"\x00\x18\0\0\0\x09"),))))
    assert later.frag_offset == 24 and later.l4_offset == -1 and later.sport == -1 and not later.malformed


def test_icmp_and_icmp6() -> None:
    p = Packet(ether(ipv4(A, B, 1, icmp(8, 0, echo_rest(1, 2), b"ping"))))
    assert (p.proto, p.icmp_type, p.icmp_code, p.sport, p.payload) == (1, 8, 0, -1, b"ping")
    q = Packet(ether(ipv6(A6, B6, 58, icmp6(A6, B6, 128, 0, echo_rest(1, 2)))))
    assert (q.proto, q.icmp_type, q.icmp_code) == (58, 128, 0)


def test_udp_and_other_protocols() -> None:
    p = Packet(ether(ipv4(A, B, 17, udp(A, B, 5353, 53, b"abc"))))
    assert (p.sport, p.dport, p.payload, p.payload_offset) == (5353, 53, b"abc", 42)
    gre = Packet(ether(ipv4(A, B, 47, b"\0\0\x08\x00" + b"x" * 8)))
    assert gre.proto == 47 and gre.sport == -1 and gre.l4_offset == 34 and gre.payload_len == 12


def test_other_link_types() -> None:
    d4 = ipv4(A, B, 17, udp(A, B, 1, 2, b"r"))
    raw = Packet(d4, linktype=LINKTYPE_RAW)
    assert raw.l3_offset == 0 and raw.sport == 1 and raw.eth_src == b""
    null = Packet(struct.pack("<I", 2) + d4, linktype=LINKTYPE_NULL)
    assert null.l3_offset == 4 and null.dport == 2
    null6 = Packet(struct.pack(">I", 24) + ipv6(A6, B6, 17, udp(A6, B6, 1, 2)), linktype=LINKTYPE_NULL)
    assert null6.ip_version == 6 and null6.sport == 1
    sll = Packet(b"\0" * 14 + b"\x08\x00" + d4, linktype=LINKTYPE_LINUX_SLL)
    assert sll.l3_offset == 16 and sll.sport == 1
    odd = Packet(d4, linktype=147)
    assert odd.malformed and "linktype" in odd.reason


def test_non_ip_ethertype_is_fine() -> None:
    p = Packet(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xcc" + b"\0" * 40)  # LLDP
    assert not p.malformed and p.ethertype == 0x88CC and p.proto == -1 and p.l3_offset == -1


def test_snaplen_cut_is_truncated_not_malformed() -> None:
    f = tcp4(payload=b"x" * 500, flags="PA")
    p = Packet(f[:96], wirelen=len(f))
    assert p.truncated and not p.malformed and p.payload_len == 96 - 54 and p.dport == 80
    # the same bytes without the wire length claim more than they hold: malformed
    q = Packet(f[:96])
    assert q.malformed and q.reason == "ipv4 total length beyond frame"


# --- malformed frames ----------------------------------------------------------------------------
def _set(f: bytes, off: int, val: bytes) -> bytes:
    return f[:off] + val + f[off + len(val) :]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 10, "truncated ethernet header"),
        (b"\0" * 12 + b"\x81\x00\x00", "truncated vlan tag"),
        (ether(b"\x45" + b"\0" * 10, 0x0800), "truncated ipv4 header"),
        (_set(tcp4(), 14, b"\x43"), "bad ipv4 header length"),
        (_set(tcp4(), 14, b"\x65"), "ip version is not 4"),
        (_set(tcp4(), 16, b"\x00\x10"), "ipv4 total length below header length"),
        (_set(tcp4(), 16, b"\x05\xdc"), "ipv4 total length beyond frame"),
        (ether(ipv4(A, B, 6, b"\0" * 10)), "truncated tcp header"),
        (_set(tcp4(), 46, b"\x30"), "bad tcp data offset"),
        (_set(tcp4(), 46, b"\xf0"), "tcp data offset past end"),
        (ether(ipv4(A, B, 17, b"\0" * 4)), "truncated udp header"),
        (ether(ipv4(A, B, 17, struct.pack("!HHHH", 1, 2, 4, 0))), "bad udp length"),
        (ether(ipv4(A, B, 17, struct.pack("!HHHH", 1, 2, 90, 0))), "udp length beyond ip payload"),
        (ether(ipv4(A, B, 1, b"\x08\0\0\0")), "truncated icmp header"),
        (ether(ipv6(A6, B6, 6, b"")[:30], 0x86DD), "truncated ipv6 header"),
        (ether(ipv6(A6, B6, 6, b"", payload_length=100)), "ipv6 payload length beyond frame"),
        (ether(ipv6(A6, B6, 0, b"\x06\x05" + b"\0" * 6)), "truncated ipv6 extension header"),
        (ether(ipv6(A6, B6, 44, b"\x06\0\0")), "truncated ipv6 fragment header"),
        (ether(b"\0\x01\x08\x00\x06\x04", 0x0806), "truncated arp header"),
        (ether(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 10, 0x0806), "truncated arp addresses"),
    ],
)
def test_malformed_reasons(frame: bytes, reason: str) -> None:
    p = Packet(frame)
    assert p.malformed and p.reason == reason
    repr(p)  # never raises either
    p.flow_key, p.direction, p.tcp_seq, p.icmp_type, p.arp_sha, p.payload  # noqa: B018


def test_options_cut_by_snaplen_are_malformed() -> None:
    f = _set(_set(tcp4(), 14, b"\x4f"), 16, b"\x00\x3c")  # 60-byte header claimed
    p = Packet(f[:40], wirelen=200)
    assert p.reason == "truncated ipv4 options"


# --- flow keys -----------------------------------------------------------------------------------
def test_flow_key_symmetric_and_direction() -> None:
    fwd = Packet(ether(ipv4(A, B, 6, tcp(A, B, 40000, 80))))
    rev = Packet(ether(ipv4(B, A, 6, tcp(B, A, 80, 40000, flags="SA"))))
    assert fwd.flow_key == rev.flow_key and fwd.direction != rev.direction
    other = Packet(ether(ipv4(A, B, 6, tcp(A, B, 40001, 80))))
    assert other.flow_key != fwd.flow_key
    udp_same = Packet(ether(ipv4(A, B, 17, udp(A, B, 40000, 80))))
    assert udp_same.flow_key != fwd.flow_key  # protocol is part of the key
    vlan = Packet(ether(ipv4(A, B, 6, tcp(A, B, 40000, 80)), vlans=(3,)))
    assert vlan.flow_key != fwd.flow_key


@settings(derandomize=True)
@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from([6, 17]),
)
def test_flow_key_symmetry_property(s: bytes, d: bytes, sp: int, dp: int, proto: int) -> None:
    l4 = tcp if proto == 6 else udp
    x = Packet(ether(ipv4(s, d, proto, l4(s, d, sp, dp))))
    y = Packet(ether(ipv4(d, s, proto, l4(d, s, dp, sp))))
    assert x.flow_key == y.flow_key
    assert x.direction != y.direction or (s, sp) == (d, dp)


def test_ipv6_flow_key_symmetric() -> None:
    x = Packet(ether(ipv6(A6, B6, 17, udp(A6, B6, 1000, 53))))
    y = Packet(ether(ipv6(B6, A6, 17, udp(B6, A6, 53, 1000))))
    assert x.flow_key == y.flow_key and hash(x.flow_key) == hash(y.flow_key)


# --- hostile bytes -------------------------------------------------------------------------------
_LINKTYPES = st.sampled_from([1, 1, 1, 0, 101, 108, 113, 276])


def _check(p: Packet) -> None:
    assert p.reason is None or (isinstance(p.reason, str) and p.reason)
    # every accessor works on whatever came out
    for name in (
        "flow_key",
        "direction",
        "tcp_seq",
        "tcp_ack",
        "tcp_window",
        "icmp_type",
        "icmp_code",
        "arp_op",
        "arp_sha",
        "arp_tha",
        "payload",
        "ttl",
        "ip_id",
        "eth_src",
        "ip_version",
    ):
        getattr(p, name)
    repr(p)
    if p.reason is None and p.payload_offset >= 0:
        assert 0 <= p.payload_offset <= len(p.data) and p.payload_offset + p.payload_len <= len(p.data)
        assert p.payload_len >= 0


@settings(derandomize=True, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), _LINKTYPES)
def test_random_bytes_never_raise(data: bytes, lt: int) -> None:
    _check(Packet(data, linktype=lt))


_SEEDS = [
    tcp4(payload=b"GET / HTTP/1.1\r\n\r\n", flags="PA"),
    tcp4(vlans=(7, 8), outer_tpid=0x88A8),
    ether(ipv4(A, B, 17, udp(A, B, 53, 1, b"dns"), options=b"\x01\x01\x01\x01")),
    ether(ipv6(A6, B6, 6, tcp(A6, B6, 1, 2, payload=b"x"), ext=((0, b""), (44, b"\0\0\0\0\0\1")))),
    ether(ipv6(A6, B6, 58, icmp6(A6, B6, 128))),
    arp_frame(1, "02:00:00:00:00:01", A, tpa=B),
    ether(ipv4(A, B, 1, icmp(8, 0, echo_rest(1, 1), b"abc"))),
]


@settings(derandomize=True, max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
    st.integers(0, 130),
)
def test_mutated_and_truncated_frames_never_raise(frame: bytes, flips, cut: int) -> None:
    buf = bytearray(frame)
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    data = bytes(buf[: len(buf) - cut if cut < len(buf) else 0])
    _check(Packet(data))
    _check(Packet(data, wirelen=len(frame) + 100))  # as if the snap length cut it


# --- batches -------------------------------------------------------------------------------------
def test_batch() -> None:
    pkts = [Packet(tcp4(sport=i)) for i in range(70)] + [Packet(b"\0")]
    bs = list(batched(pkts, 32))
    assert [len(x) for x in bs] == [32, 32, 7]
    good, dropped = bs[-1].good()
    assert len(good) == 6 and dropped == 1
    yes, no = bs[0].split(lambda p: p.sport % 2 == 0)
    assert len(yes) == 16 and len(no) == 16 and yes[0].sport == 0
    assert bs[0].nbytes == sum(len(p.data) for p in pkts[:32]) and bs[0].wire_bytes == bs[0].nbytes
    assert not Batch() and not Batch().full
    with pytest.raises(ValueError):
        list(batched(pkts, MAX_BATCH + 1))


def test_meta_is_per_packet() -> None:
    p, q = Packet(tcp4()), Packet(tcp4())
    p.meta["verdict"] = "unsafe"
    assert q.meta == {} and p.meta == {"verdict": "unsafe"}
    r = Packet(tcp4(), meta={"x": 1})
    assert r.meta["x"] == 1


def test_parse_accepts_buffers() -> None:
    f = tcp4(payload=b"abc", flags="PA")
    for buf in (bytearray(f), memoryview(f)):
        p = Packet.parse(buf, ts=2.0, port="x")
        assert type(p.data) is bytes and p.payload == b"abc" and hash(p.flow_key) == hash(Packet(f).flow_key)


def _fields(p: Packet) -> tuple:
    return tuple(getattr(p, k) for k in Packet.__slots__ if k != "meta_if_any")


def _general(data: bytes, **kw) -> Packet:
    from e2actors.packet import packet as mod

    mod._FAST = False
    try:
        return Packet(data, **kw)
    finally:
        mod._FAST = True


def test_fast_paths_agree_with_general_parser() -> None:
    from e2actors.packet.traffic import frames

    n = 0
    for _ts, f in frames(150, seed=4) + frames(60, seed=5, profile="ipv6"):
        assert _fields(Packet(f)) == _fields(_general(f)), Packet(f)
        n += 1
    assert n > 1000


@settings(derandomize=True, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=3),
    st.integers(0, 40),
    st.integers(0, 50),
)
def test_fast_paths_agree_on_damaged_frames(frame: bytes, flips, cut: int, extra: int) -> None:
    buf = bytearray(frame)
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    data = bytes(buf[: max(0, len(buf) - cut)]) + b"\0" * (extra if cut == 0 else 0)
    for wl in (None, len(data) + extra):
        assert _fields(Packet(data, wirelen=wl)) == _fields(_general(data, wirelen=wl))
