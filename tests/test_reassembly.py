"""TCP reassembly (e2actors.packet.reassembly): unit cases for each rule, then hypothesis properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.packet.build import ether, ip, tcp, udp
from e2actors.packet.packet import Packet
from e2actors.packet.reassembly import Chunk, End, Gap, Reassembler

C, S = "198.18.0.1", "198.19.0.1"
CP, SP = 40000, 80


def seg(client: bool, seq: int, data: bytes = b"", flags: str = "PA", ts: float = 0.0,
        c: str = C, cp: int = CP) -> Packet:
    """A TCP packet of the test connection, from the client or from the server."""
    src, dst, sp, dp = (c, S, cp, SP) if client else (S, c, SP, cp)
    return Packet(ether(ip(src, dst, 6, tcp(src, dst, sp, dp, seq=seq, ack=1, flags=flags, payload=data))), ts)


def chunks(events: list, direction: int | None = None) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Chunk) and (direction is None or e.direction == direction))


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


CDIR = seg(True, 0).direction  # the client's direction in the flow key
SDIR = 1 - CDIR


# --- handshake, start of stream ---------------------------------------------------------------
def test_handshake_data_starts_after_isn():
    r = Reassembler()
    assert r.feed(seg(True, 1000, flags="S")) == []
    assert r.feed(seg(False, 5000, flags="SA")) == []
    assert r.feed(seg(True, 1001, flags="A")) == []
    p = seg(True, 1001, b"GET / HTTP/1.1\r\n")
    ev = r.feed(p)
    assert kinds(ev) == ["Chunk"]
    assert ev[0].data == b"GET / HTTP/1.1\r\n" and ev[0].carriers == [p] and ev[0].direction == CDIR
    q = seg(False, 5001, b"HTTP/1.1 200 OK\r\n")
    ev = r.feed(q)
    assert ev[0].data == b"HTTP/1.1 200 OK\r\n" and ev[0].direction == SDIR and ev[0].carriers == [q]
    assert r.stats["flows"] == 1 and r.stats["segments"] == 5 and len(r) == 1


def test_syn_with_data_and_repeated_syn():
    r = Reassembler()
    p = seg(True, 99, b"fastopen", flags="S")
    ev = r.feed(p)
    assert chunks(ev) == b"fastopen" and ev[0].carriers == [p]
    assert r.feed(seg(True, 99, b"fastopen", flags="S")) == []  # the retransmitted SYN: old bytes
    assert chunks(r.feed(seg(True, 108, b"!"))) == b"!"


def test_new_isn_before_any_data_restarts_the_stream():
    r = Reassembler()
    r.feed(seg(True, 1000, flags="S"))
    r.feed(seg(True, 7000, flags="S"))  # the client gave up on the first SYN and picked a new ISN
    assert chunks(r.feed(seg(True, 7001, b"abc"))) == b"abc"


def test_mid_stream_join_starts_at_first_data():
    r = Reassembler()
    assert r.feed(seg(True, 123456, flags="A")) == []  # a pure ACK of an unknown flow: no state
    assert len(r) == 0
    ev = r.feed(seg(True, 777, b"middle of"))
    assert chunks(ev) == b"middle of"
    assert chunks(r.feed(seg(True, 786, b" a stream"))) == b" a stream"
    assert r.feed(seg(True, 700, b"x" * 77)) == []  # before the join point: counted as old
    assert r.stats["retransmitted"] == 1


# --- order, retransmission, overlap ---------------------------------------------------------------
def test_out_of_order_is_buffered_then_delivered_with_all_carriers():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    p2 = seg(True, 6, b"world")
    assert r.feed(p2) == [] and r.last_held
    assert r.buffered(p2.flow_key, CDIR) == 5
    p1 = seg(True, 1, b"hello")
    ev = r.feed(p1)
    assert not r.last_held
    assert kinds(ev) == ["Chunk"] and ev[0].data == b"helloworld" and ev[0].carriers == [p1, p2]
    assert r.stats["out_of_order"] == 1 and r.total == 0


def test_full_retransmission_gives_nothing():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 1, b"hello"))
    assert r.feed(seg(True, 1, b"hello")) == [] and not r.last_held
    assert r.stats["retransmitted"] == 1 and r.stats["overlap_conflicts"] == 0


def test_partial_overlap_delivers_only_new_bytes():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 1, b"0123456789"))
    p = seg(True, 6, b"56789abcde")
    ev = r.feed(p)
    assert chunks(ev) == b"abcde" and ev[0].carriers == [p]
    assert r.stats["overlap_bytes"] == 5


def test_first_copy_wins_against_buffered_bytes():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 6, b"WORLD"))
    r.feed(seg(True, 6, b"XXRLD"))  # same bytes, different content: ignored, 2 bytes differ
    assert r.stats["overlap_conflicts"] == 2
    ev = r.feed(seg(True, 1, b"hello"))
    assert chunks(ev) == b"helloWORLD"


def test_first_copy_wins_against_delivered_bytes():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 1, b"hello"))
    assert r.feed(seg(True, 1, b"jello")) == []
    assert r.stats["overlap_conflicts"] == 1
    ev = r.feed(seg(True, 3, b"LLo!"))  # 3 old bytes (2 differ), 1 new
    assert chunks(ev) == b"!" and r.stats["overlap_conflicts"] == 3


def test_history_zero_disables_conflict_check_on_delivered_bytes():
    r = Reassembler(history=0)
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 1, b"hello"))
    r.feed(seg(True, 1, b"jello"))
    assert r.stats["overlap_conflicts"] == 0 and r.stats["retransmitted"] == 1


def test_segment_spanning_buffered_pieces_is_one_carrier_once():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    small = seg(True, 6, b"FGHIJ")  # offsets 5..10
    big = seg(True, 4, b"defghijklmn")  # offsets 3..14 around it: new parts 3..5 and 10..14
    assert r.feed(small) == [] and r.feed(big) == [] and r.last_held
    assert r.stats["overlap_conflicts"] == 5  # FGHIJ vs fghij
    first = seg(True, 1, b"abc")
    ev = r.feed(first)
    assert chunks(ev) == b"abcdeFGHIJklmn"
    assert ev[0].carriers == [first, big, small]


# --- FIN, RST, after the end ----------------------------------------------------------------------
def test_fin_both_ways_ends_the_flow():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(False, 100, flags="SA"))
    r.feed(seg(True, 1, b"req"))
    ev = r.feed(seg(False, 101, b"resp", flags="FPA"))  # data and FIN in one segment
    assert kinds(ev) == ["Chunk"]
    ev = r.feed(seg(True, 4, flags="FA"))
    assert kinds(ev) == ["End"] and ev[0].reason == "fin"
    assert len(r) == 0 and r.stats["ends_fin"] == 1
    assert r.feed(seg(False, 106, flags="A")) == []  # the last ACK: lingering, no new flow
    assert r.feed(seg(True, 1, b"req")) == []  # a late retransmission too
    assert r.stats["late"] == 2 and len(r) == 0
    ev = r.feed(seg(True, 5000, flags="S"))  # a new connection on the same ports
    assert ev == [] and len(r) == 1 and r.stats["flows"] == 2


def test_fin_waits_for_missing_bytes_and_data_beyond_fin_is_dropped():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(False, 100, flags="SA"))
    r.feed(seg(False, 101, flags="FA"))
    assert r.feed(seg(True, 4, b"def", flags="FPA")) == []  # FIN at offset 6, bytes 0..3 missing
    assert r.feed(seg(True, 7, b"zzz")) == [] and r.stats["after_fin"] == 1
    ev = r.feed(seg(True, 1, b"abc"))
    assert kinds(ev) == ["Chunk", "End"] and chunks(ev) == b"abcdef" and ev[1].reason == "fin"


def test_rst_flushes_buffered_bytes_with_a_gap_and_ends():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    p = seg(True, 11, b"later")
    r.feed(p)
    ev = r.feed(seg(True, 16, flags="R"))
    assert kinds(ev) == ["Gap", "Chunk", "End"]
    assert ev[0].missing == 10 and ev[0].carriers == [p] and ev[1].data == b"later" and ev[2].reason == "rst"
    assert r.total == 0 and len(r) == 0


def test_rst_out_of_window_is_ignored():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S"))
    r.feed(seg(True, 1, b"abc"))
    assert r.feed(seg(True, 1 + 3 + 10_000_000, flags="R")) == []
    assert r.feed(seg(True, 0, flags="R")) == []  # behind the stream: ignored too
    assert r.stats["rst_ignored"] == 2 and len(r) == 1
    assert kinds(r.feed(seg(False, 55, flags="R"))) == ["End"]  # the other side never sent a byte


def test_rst_of_unknown_flow_creates_nothing():
    r = Reassembler()
    assert r.feed(seg(True, 5, flags="R")) == [] and len(r) == 0


# --- sequence wrap-around ---------------------------------------------------------------------------
def test_wraparound_across_2_32():
    r = Reassembler()
    isn = 2**32 - 4
    r.feed(seg(True, isn, flags="S"))  # data starts at 2^32 - 3
    b = seg(True, 3, b"DEFG")  # offsets 6..10 (after the wrap)
    a = seg(True, 2**32 - 3, b"ABC")  # offsets 0..3 (seq 2^32-3 .. 2^32-1)
    m = seg(True, 0, b"xyz")  # offsets 3..6: seq 0, 1, 2
    assert r.feed(b) == [] and r.feed(a) != []
    ev = r.feed(m)
    assert chunks(ev) == b"xyzDEFG" and ev[0].carriers == [m, b]
    assert r.feed(seg(True, 2**32 - 1, b"Cxy")) == []  # a retransmission across the wrap
    assert r.stats["overlap_conflicts"] == 0
    fin = r.feed(seg(True, 7, flags="FA"))
    assert fin == [] and r.feed(seg(False, 9, flags="FA"))[0].reason == "fin"


def test_mid_stream_join_near_wrap():
    r = Reassembler()
    r.feed(seg(True, 2**32 - 2, b"ab"))
    assert chunks(r.feed(seg(True, 0, b"cd"))) == b"cd"


# --- gaps and bounds --------------------------------------------------------------------------------
def test_gap_timeout_skips_the_hole():
    r = Reassembler(gap_timeout=1.0)
    r.feed(seg(True, 0, flags="S"), 0.0)
    p = seg(True, 11, b"after")
    assert r.feed(p, 0.2) == []
    assert r.advance(1.1) == []  # waited 0.9 s only
    ev = r.advance(1.2)
    assert kinds(ev) == ["Gap", "Chunk"] and ev[0].missing == 10 and ev[0].carriers == [p]
    assert ev[1].data == b"after" and r.stats["gaps"] == 1 and r.stats["gap_bytes"] == 10
    assert r.feed(seg(True, 1, b"0123456789"), 1.3) == []  # too late: old bytes now
    assert chunks(r.feed(seg(True, 16, b"!"), 1.4)) == b"!"


def test_gap_timer_restarts_on_progress():
    r = Reassembler(gap_timeout=1.0)
    r.feed(seg(True, 0, flags="S"), 0.0)
    r.feed(seg(True, 3, b"b"), 0.0)  # hole at offset 0..2
    r.feed(seg(True, 6, b"d"), 0.0)  # hole at offset 3..5
    assert chunks(r.feed(seg(True, 1, b"aa"), 0.9)) == b"aab"
    assert r.advance(1.5) == []  # progress at 0.9: the second hole has until 1.9
    ev = r.advance(1.9)
    assert kinds(ev) == ["Gap", "Chunk"] and ev[0].missing == 2


def test_fin_beyond_a_hole_times_out():
    r = Reassembler(gap_timeout=0.5)
    r.feed(seg(True, 0, flags="S"), 0.0)
    r.feed(seg(False, 50, flags="FA"), 0.0)  # the server's side: joined by its FIN, done
    r.feed(seg(True, 11, flags="FA"), 0.0)  # the client's FIN, 10 bytes never came
    ev = r.advance(0.5)
    assert kinds(ev) == ["Gap", "End"] and ev[0].missing == 10 and ev[0].carriers == [] and ev[1].reason == "fin"


def test_per_flow_bound_forces_a_skip():
    r = Reassembler(max_flow_buffer=10)
    r.feed(seg(True, 0, flags="S"))
    a = seg(True, 3, b"AAAAAA")  # hole 0..2, 6 buffered
    assert r.feed(a) == []
    b = seg(True, 12, b"BBBBB")  # hole 8..11, 11 buffered > 10: skip the first hole
    ev = r.feed(b)
    assert kinds(ev) == ["Gap", "Chunk"] and ev[0].missing == 2 and ev[1].data == b"AAAAAA" and ev[1].carriers == [a]
    assert r.last_held and r.buffered(b.flow_key, CDIR) == 5
    assert r.stats["overflow_skips"] == 1 and r.total == 5


def test_global_bound_skips_the_longest_waiting_hole():
    r = Reassembler(max_total_buffer=10)
    r.feed(seg(True, 0, flags="S", cp=1111), 0.0)
    r.feed(seg(True, 0, flags="S", cp=2222), 0.0)
    p1 = seg(True, 5, b"oldest", cp=1111)
    r.feed(p1, 1.0)
    p2 = seg(True, 5, b"newer", cp=2222)
    ev = r.feed(p2, 2.0)  # 11 bytes buffered in all: flow 1111 waited longest
    assert kinds(ev) == ["Gap", "Chunk"] and ev[0].flow == p1.flow_key and ev[1].carriers == [p1]
    assert r.last_held and r.total == 5 and r.stats["overflow_skips"] == 1


def test_single_segment_bigger_than_the_bound():
    r = Reassembler(max_flow_buffer=4)
    r.feed(seg(True, 0, flags="S"))
    ev = r.feed(seg(True, 3, b"0123456789"))
    assert kinds(ev) == ["Gap", "Chunk"] and not r.last_held and r.total == 0


def test_idle_expiry_flushes_and_ends():
    r = Reassembler(idle_timeout=10.0, gap_timeout=100.0)
    r.feed(seg(True, 0, flags="S"), 0.0)
    r.feed(seg(True, 5, b"tail"), 1.0)
    assert r.advance(10.9) == []
    ev = r.advance(11.0)
    assert kinds(ev) == ["Gap", "Chunk", "End"] and ev[2].reason == "idle" and len(r) == 0
    assert r.stats["ends_idle"] == 1


def test_flush_ends_everything():
    r = Reassembler()
    r.feed(seg(True, 0, flags="S", cp=1))
    r.feed(seg(True, 0, flags="S", cp=2))
    ev = r.flush(5.0)
    assert kinds(ev) == ["End", "End"] and {e.reason for e in ev} == {"flush"} and len(r) == 0


def test_linger_expires():
    r = Reassembler(linger=2.0)
    r.feed(seg(True, 0, flags="S"), 0.0)
    r.feed(seg(True, 1, flags="R"), 0.0)
    assert r.feed(seg(True, 1, b"x"), 1.0) == [] and r.stats["late"] == 1
    r.advance(2.0)
    assert chunks(r.feed(seg(True, 1, b"x"), 2.5)) == b"x"  # forgotten: a mid-stream join


def test_non_tcp_and_malformed_are_ignored():
    r = Reassembler()
    u = Packet(ether(ip(C, S, 17, udp(C, S, 1, 2, b"dns"))))
    bad = Packet(ether(ip(C, S, 6, tcp(C, S, 1, 2, payload=b"x")))[:40])
    assert r.feed(u) == [] and r.feed(bad) == [] and r.last_key is None
    assert r.stats["ignored"] == 2


def test_ipv6_and_vlan_flows():
    c6, s6 = "2001:db8::1", "2001:db8::2"
    p = Packet(ether(ip(c6, s6, 6, tcp(c6, s6, 5, 6, seq=10, flags="PA", payload=b"v6")), vlans=(10,)))
    r = Reassembler()
    ev = r.feed(p)
    assert chunks(ev) == b"v6" and ev[0].flow == p.flow_key


# --- properties ---------------------------------------------------------------------------------------
def _segments(draw, data: bytes, isn: int, client: bool, dup_mutate: bool):
    """Cut ``data`` into segments, add duplicates of random ranges (sometimes altered)."""
    n = len(data)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12)))) if n > 1 else []
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    segs = [(bounds[i], bounds[i + 1], data[bounds[i]:bounds[i + 1]]) for i in range(len(bounds) - 1) if bounds[i] < bounds[i + 1]]
    for _ in range(draw(st.integers(0, 6))):
        if n == 0:
            break
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, min(n, a + 64)))
        body = data[a:b]
        if dup_mutate and draw(st.booleans()):
            body = bytes(x ^ 0x20 for x in body)
        segs.append((a, b, body))
    return [(client, a, b, body, seg(client, (isn + 1 + a) & 0xFFFFFFFF, body)) for a, b, body in segs]


@st.composite
def scenario(draw, dup_mutate: bool = False):
    isn_s = st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 300, 2**32 - 1))
    cdata = draw(st.binary(min_size=0, max_size=300))
    sdata = draw(st.binary(min_size=0, max_size=300))
    cisn, sisn = draw(isn_s), draw(isn_s)
    segs = _segments(draw, cdata, cisn, True, dup_mutate) + _segments(draw, sdata, sisn, False, dup_mutate)
    order = draw(st.permutations(range(len(segs))))
    shuffled = [segs[i] for i in order]
    return cdata, sdata, cisn, sisn, shuffled


def _model(shuffled):
    """First copy wins, independently: per direction the bytes seen first, which packets brought new
    bytes, and how many later bytes differ from the first copy."""
    first = {True: {}, False: {}}
    new = set()
    conflicts = 0
    for client, a, b, body, p in shuffled:
        m = first[client]
        for i in range(a, b):
            if i in m:
                conflicts += m[i] != body[i - a]
            else:
                m[i] = body[i - a]
                new.add(id(p))
    return first, new, conflicts


@settings(derandomize=True, max_examples=300, deadline=None)
@given(scenario())
def test_any_segmentation_order_and_duplication_gives_back_the_stream(sc):
    cdata, sdata, cisn, sisn, shuffled = sc
    r = Reassembler(gap_timeout=1e9)
    ev = r.feed(seg(True, cisn, flags="S")) + r.feed(seg(False, sisn, flags="SA"))
    for _c, _a, _b, _body, p in shuffled:
        ev += r.feed(p, 0.0)
    assert not any(isinstance(e, Gap) for e in ev)
    assert chunks(ev, CDIR) == cdata and chunks(ev, SDIR) == sdata
    assert r.total == 0
    _first, new, conflicts = _model(shuffled)
    carried = [id(p) for e in ev if isinstance(e, Chunk) for p in e.carriers]
    assert len(carried) == len(set(carried))  # each packet in at most one chunk
    assert set(carried) == new  # exactly the packets that brought new bytes
    assert r.stats["overlap_conflicts"] == conflicts == 0


@settings(derandomize=True, max_examples=300, deadline=None)
@given(scenario(dup_mutate=True))
def test_first_copy_wins_with_altered_duplicates(sc):
    cdata, sdata, cisn, sisn, shuffled = sc
    r = Reassembler(gap_timeout=1e9, history=1 << 20)
    ev = r.feed(seg(True, cisn, flags="S")) + r.feed(seg(False, sisn, flags="SA"))
    for _c, _a, _b, _body, p in shuffled:
        ev += r.feed(p, 0.0)
    first, new, conflicts = _model(shuffled)
    assert chunks(ev, CDIR) == bytes(first[True][i] for i in range(len(cdata)))
    assert chunks(ev, SDIR) == bytes(first[False][i] for i in range(len(sdata)))
    carried = [id(p) for e in ev if isinstance(e, Chunk) for p in e.carriers]
    assert len(carried) == len(set(carried)) and set(carried) == new
    assert r.stats["overlap_conflicts"] == conflicts


@settings(derandomize=True, max_examples=150, deadline=None)
@given(scenario(), st.integers(1, 400), st.integers(1, 2000))
def test_bounds_hold_and_every_byte_is_delivered_or_skipped(sc, flow_bound, total_bound):
    """Under tiny bounds: the buffer never exceeds them, and delivered + skipped = the stream."""
    cdata, sdata, cisn, sisn, shuffled = sc
    r = Reassembler(max_flow_buffer=flow_bound, max_total_buffer=total_bound, gap_timeout=1e9)
    ev = r.feed(seg(True, cisn, flags="S")) + r.feed(seg(False, sisn, flags="SA"))
    for _c, _a, _b, _body, p in shuffled:
        ev += r.feed(p, 0.0)
        assert r.total <= total_bound
        assert r.buffered(p.flow_key, 0) <= flow_bound and r.buffered(p.flow_key, 1) <= flow_bound
    ev += r.flush(1.0)
    for d, data in ((CDIR, cdata), (SDIR, sdata)):
        got = sum(len(e.data) for e in ev if isinstance(e, Chunk) and e.direction == d)
        skipped = sum(e.missing for e in ev if isinstance(e, Gap) and e.direction == d)
        assert got + skipped == len(data)
        # Whatever was delivered is the original byte at its place.
        pos = 0
        for e in ev:
            if getattr(e, "direction", None) != d:
                continue
            if isinstance(e, Gap):
                pos += e.missing
            else:
                assert e.data == data[pos:pos + len(e.data)]
                pos += len(e.data)
    assert isinstance(ev[-1], End) and r.total == 0


def test_seeded_random_stress_many_flows():
    """Many interleaved flows, shuffled within a window, with timestamps: every stream comes back."""
    rng = random.Random(7)
    streams = {}
    pkts = []
    for f in range(50):
        data = rng.randbytes(rng.randrange(0, 5000))
        isn = rng.getrandbits(32)
        streams[f] = data
        pkts.append(seg(True, isn, flags="S", cp=10000 + f))
        i = 0
        segs = []
        while i < len(data):
            n = rng.randrange(1, 700)
            segs.append(seg(True, (isn + 1 + i) & 0xFFFFFFFF, data[i:i + n], cp=10000 + f))
            i += n
        for j in range(len(segs) - 1):  # local swaps: reordering
            if rng.random() < 0.3:
                segs[j], segs[j + 1] = segs[j + 1], segs[j]
        segs += rng.sample(segs, k=min(3, len(segs)))  # retransmissions
        pkts += segs
    r = Reassembler(gap_timeout=1e9)
    out: dict = {}
    for p in pkts:
        for e in r.feed(p, 0.0):
            if isinstance(e, Chunk):
                out[e.flow] = out.get(e.flow, b"") + e.data
    for f, data in streams.items():
        key = seg(True, 0, cp=10000 + f).flow_key
        assert out.get(key, b"") == data
