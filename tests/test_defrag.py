"""First fragments and :class:`Defragmenter`, on crafted bytes (no root, no event loop).

The rules themselves are checked against the Linux stack and tshark in tests/test_fragments_netns.py;
here: the parser's view of first fragments, exact reassembly under any arrival order, the
metadata policy, timeouts, bounds, and that every packet fed is accounted for.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.packet.build import ether, fragment, ipv4, ipv6, tcp, udp
from e2actors.packet.defrag import Defragmenter
from e2actors.packet.filter import compile_filter
from e2actors.packet.packet import Packet

A, B = "198.18.0.1", "198.18.0.2"
A6, B6 = "2001:2::1", "2001:2::2"
BIG = bytes((i * 13) & 0xFF for i in range(3000))


def frags4(payload: bytes = BIG, size: int = 1480, ident: int = 7, **kw) -> list[Packet]:
    return [Packet(ether(f, **kw)) for f in fragment(ipv4(A, B, 17, udp(A, B, 5353, 53, payload), ident=ident), size)]


def frags6(payload: bytes = BIG, size: int = 1448, ident: int = 9, ext=(), **kw) -> list[Packet]:
    dg = ipv6(A6, B6, 17, udp(A6, B6, 5353, 53, payload), ext=ext)
    return [Packet(ether(f, **kw)) for f in fragment(dg, size, ident=ident)]


# --- first fragments in the parser ------------------------------------------------------------------
@pytest.mark.parametrize("make", [frags4, frags6])
def test_first_fragment_has_ports_later_ones_do_not(make) -> None:
    first, *later = make()
    assert not first.malformed, first.reason
    assert (first.sport, first.dport, first.frag_offset, first.more_fragments) == (5353, 53, 0, True)
    assert first.payload == BIG[: first.payload_len] and first.payload_len == len(first.data) - first.payload_offset
    for p in later:
        assert not p.malformed and p.sport == p.dport == p.l4_offset == -1 and p.frag_offset > 0
    # one flow key for all the pieces of a datagram (ports -1), apart from unfragmented traffic
    assert len({p.flow_key for p in (first, *later)}) == 1
    assert compile_filter("udp port 53").match(first.data, first.wirelen) == (first.ip_version == 4)  # libpcap's view


def test_later_ipv6_fragment_is_data_after_the_fragment_header() -> None:
    """Bytes after the fragment header of a later fragment are data, even when the fragment header
    names an extension header (destination options) as what follows."""
    dg = ipv6(A6, B6, 17, udp(A6, B6, 7, 8, b"Q" * 30), ext=((60, b"\x01\x04\0\0\0\0"),))
    first, later = (Packet(ether(f)) for f in fragment(dg, 16, ident=5)[:2])
    assert not first.malformed and first.sport == 7
    assert not later.malformed and later.payload_offset == 14 + 48 and later.payload_len == 16


def test_unfragmented_udp_still_checks_its_length() -> None:
    dg = bytearray(ipv4(A, B, 17, udp(A, B, 1, 2, b"x" * 40)))
    dg[24:26] = struct.pack("!H", 100)  # UDP length beyond the IP payload, no fragmentation
    assert Packet(ether(bytes(dg))).reason == "udp length beyond ip payload"


def test_tcp_first_fragment() -> None:
    seg = tcp(A, B, 1234, 80, flags="PA", payload=b"y" * 100)
    first = Packet(ether(ipv4(A, B, 6, seg[:48], mf=True)))
    assert not first.malformed and (first.sport, first.dport, first.payload_len) == (1234, 80, 28)
    tiny = Packet(ether(ipv4(A, B, 6, seg[:8], mf=True)))  # RFC 1858's tiny fragment
    assert tiny.reason == "tcp header split across fragments"
    opts = tcp(A, B, 1, 2, flags="S", options=b"\x02\x04\x05\xb4" * 4)
    assert Packet(ether(ipv4(A, B, 6, opts[:24], mf=True))).reason == "tcp header split across fragments"
    assert Packet(ether(ipv4(A, B, 6, seg[:8]))).reason == "truncated tcp header"


# --- reassembly ----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2), st.integers(1, 4000), st.sampled_from([8, 16, 512, 1448]), st.randoms(use_true_random=False))
def test_any_arrival_order_rebuilds_the_datagram_exactly(kind: int, n: int, size: int, rnd: random.Random) -> None:
    payload = bytes(rnd.getrandbits(8) for _ in range(n))
    if kind == 0:
        dg = ipv4(A, B, 17, udp(A, B, 7, 8, payload), ident=3, options=b"\x94\x04\0\0")
    elif kind == 1:
        dg = ipv6(A6, B6, 17, udp(A6, B6, 7, 8, payload), ext=((0, b"\x01\x04\0\0\0\0"),))
    else:  # destination options after the cut: the first piece must still hold the UDP header
        dg = ipv6(A6, B6, 17, udp(A6, B6, 7, 8, payload), ext=((60, b"\x01\x04\0\0\0\0"),))
        size = max(size, 16)
    pieces = [Packet(ether(f, vlans=(12,))) for f in fragment(dg, size, ident=None if kind == 0 else 5)]
    order = list(range(len(pieces)))
    rnd.shuffle(order)
    d = Defragmenter(max_fragments=1000)
    outs = [d.feed(pieces[i]) for i in order]
    assert all(o is None for o in outs[:-1])
    whole = outs[-1]
    if len(pieces) == 1:  # one piece: not a fragment (IPv6: an atomic fragment, RFC 6946): as is
        assert whole is pieces[0] and d.stats["passed"] == 1
        return
    assert whole is not None and not whole.malformed, whole and whole.reason
    assert whole.data[18:] == dg  # IPv4 options and IPv6 extension headers, before or after the cut
    assert whole.vlans == (12,) and whole.payload == payload and whole.sport == 7 and whole.frag == 0
    assert d.last_fragments == sorted(pieces, key=lambda p: p.frag_offset)
    assert len(d) == 0 and d.held_bytes == 0 and not d.take_dropped()


def test_metadata_policy() -> None:
    pieces = frags4()
    for i, p in enumerate(pieces):
        p.ts, p.port = 10.0 + i, f"in{i}"
    pieces[0].meta.update(who="first", a=1)
    pieces[2].meta.update(who="last", b=2)
    d = Defragmenter()
    assert d.feed(pieces[2]) is None and d.feed(pieces[0]) is None
    whole = d.feed(pieces[1])  # completes it
    assert whole is not None
    assert (whole.ts, whole.port, whole.wirelen) == (11.0, "in1", len(whole.data))
    assert whole.meta == {"who": "first", "a": 1, "b": 2}
    assert pieces[0].meta == {"who": "first", "a": 1}  # the originals are untouched
    # not a fragment: the very same object comes back, and stands for itself
    plain = Packet(ether(ipv4(A, B, 17, udp(A, B, 1, 2, b"hi"))))
    assert d.feed(plain) is plain and d.last_fragments == [plain]


def test_malformed_and_truncated_fragments_pass_unchanged() -> None:
    first, *_ = frags4()
    cut = Packet(first.data[:200], wirelen=len(first.data))
    bad = Packet(ether(ipv4(A, B, 6, b"\0" * 8, mf=True)))
    d = Defragmenter()
    assert d.feed(cut) is cut and d.feed(bad) is bad
    assert d.stats["truncated"] == 1 and d.stats["passed"] == 2 and len(d) == 0


def test_timeouts_per_version_from_the_first_fragment() -> None:
    d = Defragmenter(timeout=30.0, timeout6=60.0)
    p4, q4 = frags4()[:2]
    p6 = frags6()[0]
    d.feed(p4, now=0.0)
    d.feed(p6, now=1.0)
    d.feed(q4, now=29.0)  # more fragments do not restart the timer
    assert d.expire(29.9) == 0 and len(d) == 2
    assert d.expire(30.0) == 1
    assert [(p, r) for p, r in d.take_dropped()] == [(p4, "defrag timeout"), (q4, "defrag timeout")]
    assert d.expire(60.5) == 0 and d.expire(61.0) == 1 and d.take_dropped() == [(p6, "defrag timeout")]
    # a late fragment after the timeout starts afresh and cannot complete the dropped datagram
    p4, q4, r4 = frags4()
    d.feed(p4, now=100.0)
    assert d.feed(q4, now=131.0) is None and d.feed(r4, now=131.5) is None
    assert d.stats["timeouts"] == 3 and len(d) == 1


def test_bounds_evict_the_oldest() -> None:
    d = Defragmenter(max_datagrams=2)
    a, b, c = (frags4(ident=i)[0] for i in (1, 2, 3))
    for p in (a, b, c):
        d.feed(p)
    assert len(d) == 2 and d.take_dropped() == [(a, "defrag bound")] and d.stats["evicted"] == 1
    d = Defragmenter(max_bytes=4000)
    a1, a2, _a3 = frags4(ident=1)
    b1 = frags4(ident=2)[0]
    d.feed(a1), d.feed(a2), d.feed(b1)
    assert d.take_dropped() == [(a1, "defrag bound"), (a2, "defrag bound")] and d.held_bytes == 1480
    d = Defragmenter(max_bytes=1000)  # one fragment alone over the bound
    assert d.feed(a1) is None and d.take_dropped() == [(a1, "defrag bound")] and len(d) == 0
    d = Defragmenter(max_fragments=3)
    tiny = frags4(BIG[:100], size=16)
    for p in tiny[:4]:
        d.feed(p)
    assert d.stats["too_many"] == 1 and len(d.take_dropped()) == 4 and len(d) == 0
    with pytest.raises(ValueError):
        Defragmenter(max_bytes=0)
    with pytest.raises(ValueError):
        Defragmenter(timeout=0)


def test_too_big() -> None:
    d = Defragmenter()
    head = Packet(ether(ipv4(A, B, 17, udp(A, B, 1, 2, b"x" * 8)[:16], mf=True, ident=4)))
    tail = Packet(ether(ipv4(A, B, 17, b"z" * 16, frag_offset=65528, ident=4)))  # the ping of death
    assert d.feed(head) is None and d.feed(tail) is None
    assert d.stats["too_big"] == 1 and {r for _p, r in d.take_dropped()} == {"defrag too big"} and len(d) == 0
    fh = struct.pack("!HI", 65528, 4)
    tail6 = Packet(ether(ipv6(A6, B6, 17, b"z" * 16, ext=((44, fh),))))
    head6 = frags6(ident=4)[0]
    assert d.feed(head6) is None and d.feed(tail6) is None
    assert d.take_dropped() == [(tail6, "defrag too big")] and len(d) == 1  # IPv6: that fragment alone


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 4), st.booleans(),
                          st.integers(0, 1)), min_size=1, max_size=40))
def test_every_packet_is_accounted_for(spec: list[tuple[int, int, int, bool, int]]) -> None:
    """Whatever the soup of fragments (overlaps, duplicates, bad lengths, two versions), each packet
    is returned (as itself or inside a datagram), dropped once with a reason, or still held."""
    d = Defragmenter(max_datagrams=3, max_bytes=300)
    fed = []
    seen: list[int] = []
    for ident, unit, nunits, mf, v6 in spec:
        data = bytes([ident]) * (8 * nunits)
        if v6:
            p = Packet(ether(ipv6(A6, B6, 17, data, ext=((44, struct.pack("!HI", unit * 8 | mf, ident)),))))
        else:
            p = Packet(ether(ipv4(A, B, 17, data, ident=ident, mf=mf, frag_offset=unit * 8)))
        fed.append(p)
        out = d.feed(p, now=float(len(fed)))
        if out is not None:
            seen += [id(x) for x in d.last_fragments]
    seen += [id(p) for p, _r in d.take_dropped()]
    d.flush()
    seen += [id(p) for p, r in d.take_dropped()]
    assert sorted(seen) == sorted(id(p) for p in fed)
    assert d.held_bytes == 0 and len(d) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1), st.lists(st.tuples(st.integers(14, 70), st.integers(0, 255)), max_size=6),
       st.integers(20, 200))
def test_hostile_bytes_never_raise(v6: int, edits: list[tuple[int, int]], cut: int) -> None:
    d = Defragmenter()
    for frames in (frags6(BIG[:150], size=64), frags4(BIG[:150], size=64)) if v6 else (frags4(BIG[:150], size=64),):
        for p in frames:
            raw = bytearray(p.data)
            for at, value in edits:
                if at < len(raw):
                    raw[at] = value
            q = Packet(bytes(raw[: max(cut, 14)]))
            out = d.feed(q)
            assert out is None or out is q or not out.frag
    d.flush()
    assert len(d) == 0 and d.held_bytes == 0


def test_classifier_routes_a_first_fragment_by_its_ports() -> None:
    """The switch drops malformed frames before classifying: a first fragment now reaches the
    classifier and ``udp port 53`` takes it (as tcpdump's filter does), its later pieces go on."""
    from e2actors.switch.classifier import Classifier
    from e2actors.switch.table import Route

    routes = (Route("port:in", "udp port 53", "port:dns", "dns"), Route("port:in", "", "port:out", "rest"))
    cls = Classifier(routes)
    first, *later = frags4()
    assert [cls.classify("port:in", p, None) for p in (first, *later)] == [0, 1, 1]


def test_crafted_fragments_against_tshark_and_tcpdump(tmp_path) -> None:
    """Crafted first and later fragments (UDP and TCP, IPv4 and IPv6, a VLAN tag, an IPv6
    destination options header after the fragment header): ports as tshark dissects them with
    reassembly off, filters as tcpdump matches them, datagrams as tshark reassembles them."""
    import subprocess

    from conftest import need_tool

    from e2actors.packet.pcap import PcapWriter

    tshark, tcpdump = need_tool("tshark"), need_tool("tcpdump")
    seg = tcp(A, B, 40000, 80, flags="PA", payload=b"GET /" + b"t" * 2000 + b" HTTP/1.1\r\n\r\n")
    seg6 = tcp(A6, B6, 40001, 80, flags="PA", payload=b"u" * 1500)
    dgs = [
        ipv4(A, B, 17, udp(A, B, 5353, 53, BIG), ident=100),
        ipv4(A, B, 6, seg, ident=101),
        ipv6(A6, B6, 17, udp(A6, B6, 5353, 53, BIG[:1700])),
        ipv6(A6, B6, 6, seg6, ext=((60, b"\x01\x04\0\0\0\0"),)),
    ]
    frames = []
    for i, dg in enumerate(dgs):
        frames += [ether(f, vlans=(7,) if i == 1 else ()) for f in fragment(dg, 1000, ident=100 + i)]
    frames = frames[::2] + frames[1::2]  # interleaved and out of order
    path = str(tmp_path / "crafted-frags.pcap")
    with PcapWriter(path) as w:
        for i, f in enumerate(frames, 1):
            w.write(f, ts=float(i))
    pkts = [Packet(f, ts=float(i)) for i, f in enumerate(frames, 1)]
    assert not any(p.malformed for p in pkts)

    def fields(*args: str) -> list[list[str]]:
        out = subprocess.run([tshark, "-r", path, "-T", "fields", "-E", "separator=|", *args],
                             capture_output=True, text=True, check=True).stdout
        return [line.split("|") for line in out.splitlines()]

    rows = fields("-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-e", "udp.srcport",
                  "-e", "udp.dstport", "-e", "tcp.srcport", "-e", "tcp.dstport")
    theirs = [(int(us or ts or -1), int(ud or td or -1)) for us, ud, ts, td in rows]
    assert [(p.sport, p.dport) for p in pkts] == theirs
    assert sum(p.sport > 0 for p in pkts) == 4
    for expr in ("udp port 53", "tcp port 80", "port 80 or port 53", "ip6 proto 44", "vlan and tcp", "ip6 and tcp"):
        r = subprocess.run([tcpdump, "-r", path, "-n", "-tt", "--", expr], capture_output=True, text=True)
        want = {float(line.split()[0]) for line in r.stdout.splitlines()}
        f = compile_filter(expr)
        assert {p.ts for p in pkts if f.match(p.data, p.wirelen)} == want, expr
    rows = fields("-e", "frame.number", "-e", "ip.reassembled.length", "-e", "ipv6.reassembled.length",
                  "-Y", "ip.reassembled.length || ipv6.reassembled.length")
    d = Defragmenter()
    mine = {}
    for p in pkts:
        o = d.feed(p)
        if o is not None:
            mine[int(p.ts)] = len(o.data) - o.l3_offset - (20 if o.ip_version == 4 else 40)
            assert o.data[o.l3_offset:] in dgs  # byte for byte the datagram that was cut up
    assert len(mine) == 4 and mine == {int(n): int(r4 or r6) for n, r4, r6 in rows}
