"""StreamDriver (e2actors.nf.stream): verdicts on bytes applied to the packets that carried them."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.nf.pipelet import DROP, Pipelet, Verdict
from e2actors.nf.stream import StreamDriver
from e2actors.packet.packet import TCP_SYN, Packet
from e2actors.packet.reassembly import Reassembler
from e2actors.packet.traffic import SIGNATURES, generate

from test_reassembly import CDIR, SDIR, seg


class Recorder(Pipelet):
    """Records what it is given; answers with ``self.answer(flow, direction, data)``."""

    ports = ("out", "alt")
    input = "bytestream"

    def __init__(self, answer=None, gap_answer=None) -> None:
        super().__init__()
        self.seen: list = []
        self.gaps: list = []
        self.ended: list = []
        self.answer = answer or (lambda f, d, data: None)
        self.gap_answer = gap_answer or (lambda f, d, n: None)

    def on_stream(self, flow, direction, data):
        self.seen.append((flow, direction, data))
        return self.answer(flow, direction, data)

    def on_gap(self, flow, direction, missing):
        self.gaps.append((flow, direction, missing))
        return self.gap_answer(flow, direction, missing)

    def on_flow_end(self, flow, state):
        self.ended.append((flow, state))


def handshake(drv: StreamDriver, t: float = 0.0, cp: int = 40000) -> list[Packet]:
    ps = [seg(True, 0, flags="S", ts=t, cp=cp), seg(False, 100, flags="SA", ts=t, cp=cp), seg(True, 1, flags="A", ts=t, cp=cp)]
    for p in ps:
        drv.push(p)
    return ps


def test_in_order_packets_leave_at_once_with_the_default_port():
    pl = Recorder()
    drv = StreamDriver(pl)
    hs = handshake(drv)
    d = seg(True, 1, b"GET /")
    drv.push(d)
    out = drv.take_released()
    assert [p for p, _ in out] == [*hs, d]
    assert all(v.port == "out" and not v.drop for _, v in out)
    assert pl.seen == [(d.flow_key, CDIR, b"GET /")]
    assert drv.take_released() == [] and drv.pending == 0 and drv.stats["released"] == 4


def test_port_name_verdict_is_sticky_for_later_packets_without_bytes():
    pl = Recorder(answer=lambda f, d, data: "alt" if b"bad" in data else None)
    drv = StreamDriver(pl)
    handshake(drv)
    drv.push(seg(True, 1, b"good"))
    drv.push(seg(True, 5, b"bad!"))
    drv.push(seg(False, 101, flags="A"))  # a pure ACK after it: the sticky verdict
    drv.push(seg(True, 5, b"bad!"))  # a retransmission: no new bytes
    drv.push(seg(True, 9, b"more"))  # None keeps the current (alt)
    ports = [v.port for _, v in drv.take_released()]
    assert ports == ["out"] * 4 + ["alt"] * 4


def test_non_sticky_verdict_and_meta():
    once = Verdict(port="alt", meta={"verdict": "unsafe", "sid": 1}, sticky=False)
    pl = Recorder(answer=lambda f, d, data: once if data == b"x" else None)
    drv = StreamDriver(pl)
    handshake(drv)
    px = seg(True, 1, b"x")
    drv.push(px)
    ack = seg(False, 101, flags="A")
    drv.push(ack)
    out = dict((id(p), v) for p, v in drv.take_released())
    assert out[id(px)] is once and px.meta == {"verdict": "unsafe", "sid": 1}
    assert out[id(ack)].port == "out" and ack.meta_if_any is None  # current verdict unchanged, no meta


def test_sticky_meta_also_marks_later_packets():
    v = Verdict(meta={"verdict": "unsafe"})
    pl = Recorder(answer=lambda f, d, data: v)
    drv = StreamDriver(pl)
    handshake(drv)
    drv.push(seg(True, 1, b"x"))
    ack = seg(False, 101, flags="A")
    drv.push(ack)
    out = drv.take_released()
    assert ack.meta == {"verdict": "unsafe"} and out[-1][1].port == "out"  # port None -> first port


def test_out_of_order_is_held_and_blocks_its_flow_only():
    pl = Recorder(answer=lambda f, d, data: "alt" if data.startswith(b"A") else None)
    drv = StreamDriver(pl)
    handshake(drv)
    drv.take_released()
    late = seg(True, 6, b"BBBBB")
    drv.push(late)
    ack = seg(False, 101, flags="A")
    drv.push(ack)  # decided-able, but waits behind the held packet of its flow
    other = handshake(drv, cp=5555)  # another flow goes through
    assert [p for p, _ in drv.take_released()] == other
    assert drv.held == 1 and drv.pending == 2 and drv.stats["max_held"] == 1
    first = seg(True, 1, b"AAAAA")
    drv.push(first)
    out = drv.take_released()
    assert [p for p, _ in out] == [late, ack, first]  # arrival order
    assert [v.port for _, v in out] == ["alt", "alt", "alt"]  # the chunk's verdict, then sticky
    assert pl.seen[-1][2] == b"AAAAABBBBB"
    assert drv.held == 0 and drv.pending == 0


def test_gap_timeout_releases_held_packets_after_on_gap():
    pl = Recorder(gap_answer=lambda f, d, n: DROP)
    drv = StreamDriver(pl, gap_timeout=0.5)
    handshake(drv)
    drv.take_released()
    late = seg(True, 11, b"after", ts=0.1)
    drv.push(late)
    drv.advance(0.5)
    assert drv.take_released() == []
    drv.advance(0.6)
    out = drv.take_released()
    assert out == [(late, DROP)]  # on_gap's sticky DROP, then on_stream's None keeps it
    assert pl.gaps == [(late.flow_key, CDIR, 10)] and pl.seen[-1][2] == b"after"
    assert drv.stats["gaps"] == 1


def test_flow_end_releases_everything_and_ends_pipelet_state():
    pl = Recorder(answer=lambda f, d, data: "alt")
    drv = StreamDriver(pl, linger=1.0)
    hs = handshake(drv)
    key = hs[0].flow_key
    pl.flows.set(key, {"bytes": 3}, 0.0)
    held = seg(True, 4, b"zz")
    drv.push(held)
    rst = seg(True, 6, flags="R")
    drv.push(rst)
    out = drv.take_released()
    assert [p for p, _ in out] == [*hs, held, rst]
    assert pl.gaps == [(key, CDIR, 3)] and pl.ended == [(key, {"bytes": 3})] and key not in pl.flows
    late = seg(False, 101, flags="A", ts=0.5)
    drv.push(late)  # lingering: the flow's final verdict
    assert drv.take_released() == [(late, Verdict(port="alt"))]
    drv.advance(1.0)
    late2 = seg(False, 101, flags="A", ts=1.5)
    drv.push(late2)  # forgotten: a stray ACK, the default
    assert drv.take_released() == [(late2, drv.default)]
    assert drv.stats["ends"] == 1


def test_new_connection_on_ended_flow_starts_fresh():
    pl = Recorder(answer=lambda f, d, data: "alt")
    drv = StreamDriver(pl)
    handshake(drv)
    drv.push(seg(True, 1, b"x"))
    drv.push(seg(True, 2, flags="R"))
    drv.take_released()
    syn = seg(True, 9000, flags="S")
    drv.push(syn)
    assert drv.take_released() == [(syn, drv.default)]


def test_pipelet_errors_are_counted_and_packets_still_leave():
    def boom(f, d, data):
        raise RuntimeError("nf bug")

    drv = StreamDriver(Recorder(answer=boom))
    handshake(drv)
    p = seg(True, 1, b"x")
    drv.push(p)
    drv.push(seg(True, 2, b"y"))
    out = drv.take_released()
    assert len(out) == 5 and out[3] == (p, drv.default)
    assert drv.stats["errors"] == 2 and "nf bug" in drv.errors[-1][1]


def test_unknown_port_is_an_error():
    drv = StreamDriver(Recorder(answer=lambda f, d, data: "nowhere"))
    handshake(drv)
    drv.push(seg(True, 1, b"x"))
    assert drv.stats["errors"] == 1 and drv.take_released()[-1][1] == drv.default


def test_stray_packets_leave_at_once():
    drv = StreamDriver(Recorder())
    a = seg(True, 5, flags="A")
    drv.push(a)
    assert drv.take_released() == [(a, drv.default)] and drv.reassembler.stats["flows"] == 0


def test_a_flow_joined_mid_stream_after_a_pure_ack_is_told_that_acks_sender_first():
    # Suricata's midstream rule: the first packet's sender is the client, also when that packet
    # carried no bytes (a capture starting with the server's pure ACK). Told before the bytes.
    calls: list = []

    class Sides(Recorder):
        def set_first_sender(self, flow, direction):
            calls.append(("first", direction, len(self.seen)))

        def set_client(self, flow, direction):
            calls.append(("client", direction))

    drv = StreamDriver(Sides())
    ack = seg(False, 100, flags="A")          # the server's pure ACK: not reassembled, leaves at once
    drv.push(ack)
    data = seg(True, 1, b"GET / HTTP/1.1\r\n")
    drv.push(data)
    assert calls == [("first", ack.direction, 0)] and drv.pipelet.seen[0][1] == data.direction
    # A flow that opens with its SYN is told by the SYN, not by an earlier stray packet.
    calls.clear()
    drv2 = StreamDriver(Sides())
    drv2.push(seg(False, 100, flags="A", cp=40001))
    handshake(drv2, cp=40001)
    assert [c[0] for c in calls] == ["client"]


def test_flush_releases_what_waits():
    pl = Recorder()
    drv = StreamDriver(pl)
    handshake(drv)
    p = seg(True, 50, b"far")
    drv.push(p)
    drv.take_released()
    drv.flush(9.0)
    assert drv.take_released() == [(p, drv.default)] and pl.seen[-1][2] == b"far"


# --- properties -------------------------------------------------------------------------------
@st.composite
def traffic(draw):
    """Up to 3 flows; each direction's stream cut, duplicated and reordered; flows interleaved."""
    per_flow = []
    for f in range(draw(st.integers(1, 3))):
        cp = 20000 + f
        pk = []
        for client, isn in ((True, draw(st.integers(0, 2**32 - 1))), (False, draw(st.integers(0, 2**32 - 1)))):
            data = draw(st.binary(max_size=120))
            n = len(data)
            cuts = sorted({c for c in draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8)) if 0 < c < n})
            b = [0, *cuts, n]
            parts = [(b[i], b[i + 1]) for i in range(len(b) - 1) if b[i] < b[i + 1]]
            for _ in range(draw(st.integers(0, 3))):
                if n:
                    a = draw(st.integers(0, n - 1))
                    parts.append((a, draw(st.integers(a + 1, n))))
            pk.append((client, seg(client, isn, flags="S" if client else "SA", cp=cp), None))
            pk += [(client, seg(client, (isn + 1 + a) & 0xFFFFFFFF, data[a:e], cp=cp), (a, e)) for a, e in parts]
            if draw(st.booleans()):
                pk.append((client, seg(client, (isn + 1 + n) & 0xFFFFFFFF, flags="A", cp=cp), None))
        syns = [x for x in pk if x[2] is None and x[1].tcp_flags & TCP_SYN]
        rest = [x for x in pk if x not in syns]
        order = draw(st.permutations(range(len(rest))))
        per_flow.append(syns + [rest[i] for i in order])
    # Interleave the flows, keeping each flow's own order.
    out = []
    queues = [list(q) for q in per_flow]
    while any(queues):
        i = draw(st.sampled_from([k for k, q in enumerate(queues) if q]))
        out.append(queues[i].pop(0))
    return out


class Marker(Pipelet):
    """Gives each chunk its own verdict (meta names the chunk) and remembers the byte ranges."""

    ports = ("out", "alt")
    input = "bytestream"

    def __init__(self, sticky_pattern: list[bool]) -> None:
        super().__init__()
        self.pos: dict = defaultdict(int)
        self.ranges: list = []  # (flow, direction, start, end) by chunk number
        self.sticky = sticky_pattern

    def on_stream(self, flow, direction, data):
        n = len(self.ranges)
        start = self.pos[flow, direction]
        self.pos[flow, direction] = start + len(data)
        self.ranges.append((flow, direction, start, start + len(data)))
        return Verdict(port="alt" if n % 2 else "out", meta={"chunk": n},
                       sticky=self.sticky[n % len(self.sticky)] if self.sticky else True)

    def on_gap(self, flow, direction, missing):
        self.pos[flow, direction] += missing
        return None


def assert_once_in_order(pkts: list, out: list) -> None:
    """Every packet pushed left exactly once, in arrival order within its flow."""
    assert sorted(id(p) for p, _ in out) == sorted(id(p) for _, p, _ in pkts)
    by_flow_in, by_flow_out = defaultdict(list), defaultdict(list)
    for _c, p, _r in pkts:
        by_flow_in[p.flow_key].append(id(p))
    for p, _v in out:
        by_flow_out[p.flow_key].append(id(p))
    assert by_flow_in == by_flow_out


@settings(derandomize=True, max_examples=200, deadline=None)
@given(traffic(), st.lists(st.booleans(), max_size=4))
def test_every_packet_leaves_once_in_order_and_carriers_get_their_chunk_verdict(pkts, sticky):
    pl = Marker(sticky)
    drv = StreamDriver(pl, gap_timeout=1e9)
    for _c, p, _r in pkts:
        drv.push(p, 0.0)
    drv.flush(1.0)
    out = drv.take_released()
    assert_once_in_order(pkts, out)
    assert drv.pending == 0 and drv.held == 0
    assert not any(k == "gaps" and v for k, v in drv.reassembler.stats.items())
    # A packet that brought new bytes has the verdict of the chunk holding its first new byte.
    covered: dict = defaultdict(set)
    verdict = {id(p): v for p, v in out}
    for client, p, rng in pkts:
        if rng is None:
            continue
        d = CDIR if client else SDIR
        k = (p.flow_key, d)
        fresh = [i for i in range(*rng) if i not in covered[k]]
        covered[k].update(range(*rng))
        if fresh:
            n = verdict[id(p)].meta["chunk"]
            f, dd, a, b = pl.ranges[n]
            assert (f, dd) == k and a <= fresh[0] < b


@settings(derandomize=True, max_examples=150, deadline=None)
@given(traffic(), st.lists(st.floats(0.0, 0.3), min_size=1, max_size=40))
def test_with_timeouts_every_packet_still_leaves_once_in_order(pkts, steps):
    drv = StreamDriver(Marker([True]), gap_timeout=0.2, idle_timeout=1.0, linger=0.5)
    t = 0.0
    for i, (_c, p, _r) in enumerate(pkts):
        t += steps[i % len(steps)]
        p.ts = t
        drv.push(p)
        if i % 3 == 0:
            drv.advance(t)
    drv.advance(t + 100)
    out = drv.take_released()
    assert_once_in_order(pkts, out)
    assert drv.pending == 0


# --- over the traffic generator -----------------------------------------------------------------
class Streams(Pipelet):
    input = "bytestream"

    def __init__(self) -> None:
        super().__init__()
        self.data: dict = defaultdict(bytearray)

    def on_stream(self, flow, direction, data):
        self.data[flow, direction] += data
        return None


def _run_trace(pkts):
    pl = Streams()
    drv = StreamDriver(pl)
    syn_dir = {}
    tcp = [p for p in pkts if p.proto == 6 and not p.malformed]
    for i, p in enumerate(tcp):
        if p.tcp_flags & 0x12 == 0x02:
            syn_dir.setdefault(p.flow_key, p.direction)
        drv.push(p)
        if i % 32 == 31:
            drv.advance(p.ts)
    drv.flush(tcp[-1].ts + 1)
    out = drv.take_released()
    assert len(out) == len(tcp) and {id(p) for p, _ in out} == {id(p) for p in tcp}
    return pl, syn_dir, tcp


def test_http_flows_of_the_generated_trace():
    pl, syn_dir, tcp = _run_trace(generate(400, seed=3, profile="web"))
    http = {p.flow_key for p in tcp if 80 in (p.sport, p.dport)}
    assert len(http) > 50
    for key in http:
        client = bytes(pl.data[key, syn_dir[key]])
        assert client.startswith(b"GET ") and client.split(b"\r\n")[0].endswith(b" HTTP/1.1")
        assert b"\r\nHost: " in client
        server = bytes(pl.data[key, 1 - syn_dir[key]])
        assert server.startswith(b"HTTP/1.1 200 OK\r\n")
        head, body = server.split(b"\r\n\r\n", 1)
        clen = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) == clen  # the whole response, however it was segmented or reordered


def test_split_signatures_appear_whole_in_the_stream():
    pl, _syn, tcp = _run_trace(generate(300, seed=5, profile="attack"))
    split_only = 0
    for sig in SIGNATURES:
        in_packets = {p.flow_key for p in tcp if sig in p.payload}
        in_streams = {k for (k, _d), v in pl.data.items() if sig in v}
        assert in_packets <= in_streams
        split_only += len(in_streams - in_packets)
    assert split_only > 10  # only reassembly sees these


def test_whole_trace_with_a_reassembler_shared_counter():
    r = Reassembler()
    drv = StreamDriver(Streams(), reassembler=r)
    pkts = [p for p in generate(200, seed=9) if p.proto == 6 and not p.malformed]
    for p in pkts:
        drv.push(p)
    drv.advance(pkts[-1].ts + 120)
    assert len(drv.take_released()) == len(pkts)
    assert r.stats["gaps"] == 0 and r.stats["segments"] == len(pkts) and len(r) == 0
