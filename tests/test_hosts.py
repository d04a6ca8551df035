"""Host learning (``domain`` conditions): HostSniffer, HostTracker and HostFilter on crafted TCP
flows with retransmitted, reordered, overlapping and missing segments; tshark (with reassembly on)
on the same capture is the reference. The same comparison on real traffic is in
tests/test_hosts_netns.py."""

from __future__ import annotations

import pytest
from conftest import need_tool
from hostkit import arrival_order_hosts, flow_of, hostfilter_hosts, tracker_hosts, tshark_hosts
from test_hostfilter import client_hello, records

from e2actors.packet.build import ether, ipv4, ipv6, tcp, udp
from e2actors.packet.l7 import FOUND, MORE, NO, HostSniffer, peek_host
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import PcapWriter
from e2actors.switch.hosts import UNKNOWN, HostTracker

C, S = "198.18.20.1", "198.18.20.2"
C6, S6 = "2001:2:20::1", "2001:2:20::2"
CISN, SISN = 1000, 700000


def http_request(host: str) -> bytes:
    # A long target first, so the Host header lies in a later segment than the request line.
    return (b"GET /" + b"p" * 60 + b" HTTP/1.1\r\nUser-Agent: crafted\r\nHost: " + host.encode()
            + b"\r\nAccept: */*\r\n\r\n")


def tls_hello(host: str | None) -> bytes:
    return records(client_hello(host, pad=200))


class Conn:
    """Packets of one TCP connection, with timestamps 10 ms apart from ``t0``."""

    def __init__(self, cport: int, sport: int, t0: float, v6: bool = False) -> None:
        self.c, self.s = (C6, S6) if v6 else (C, S)
        self.cport, self.sport, self.t = cport, sport, t0
        self.pkts: list[Packet] = []

    def _add(self, from_client: bool, seq: int, ack: int, flags: str, payload: bytes = b"") -> None:
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        seg = tcp(src, dst, sp, dp, seq=seq, ack=ack, flags=flags, payload=payload)
        ip = ipv6(src, dst, 6, seg) if ":" in src else ipv4(src, dst, 6, seg)
        self.t += 0.01
        self.pkts.append(Packet(ether(ip), ts=self.t))

    def handshake(self) -> Conn:
        self._add(True, CISN, 0, "S")
        self._add(False, SISN, CISN + 1, "SA")
        self._add(True, CISN + 1, SISN + 1, "A")
        return self

    def client(self, data: bytes, start: int, end: int, other: bool = False) -> Conn:
        piece = data[start:end]
        if other:
            piece = bytes(b ^ 0x20 for b in piece)  # other bytes for the same sequence numbers
        self._add(True, CISN + 1 + start, SISN + 1, "PA", piece)
        return self

    def server(self, data: bytes, client_len: int) -> Conn:
        self._add(False, SISN + 1, CISN + 1 + client_len, "PA", data)
        return self

    def close(self, client_len: int, server_len: int) -> Conn:
        self._add(True, CISN + 1 + client_len, SISN + 1 + server_len, "FA")
        self._add(False, SISN + 1 + server_len, CISN + 2 + client_len, "FA")
        self._add(True, CISN + 2 + client_len, SISN + 2 + server_len, "A")
        return self


def crafted(kind: str, n: int, order: list, *, handshake: bool = True, v6: bool = False,
            host: str | None = "default") -> tuple[list[Packet], str | None]:
    """One connection (HTTP to port 80 or TLS to 443) whose client bytes go out as the pieces in
    ``order``: ``(start, end)`` of the request, ``(start, end, True)`` with other bytes."""
    name = f"h{n}.example" if host == "default" else host
    data = http_request(name) if kind == "http" else tls_hello(name) if kind == "tls" else b"SSH-2.0-x\r\n"
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    c = Conn(41000 + n, 80 if kind == "http" else 443 if kind == "tls" else 22, t0=n, v6=v6)
    if handshake:
        c.handshake()
    for piece in order:
        a, b = cut[piece[0]], cut[piece[1]]
        c.client(data, a, b, other=len(piece) > 2)
    c.server(b"HTTP/1.1 204 No Content\r\n\r\n" if kind == "http" else b"\x15\x03\x03\x00\x02\x02\x28", len(data))
    c.close(len(data), 27 if kind == "http" else 7)
    return c.pkts, (name if kind != "ssh" else None)


# (kind, order of the request's thirds, expected host or "no")
CASES = {
    "in order": ("http", [(0, 1), (1, 2), (2, 3)]),
    "first retransmitted at once": ("http", [(0, 1), (0, 1), (1, 2), (2, 3)]),
    "first after a later one": ("http", [(1, 2), (0, 1), (2, 3)]),
    "first lost, comes last": ("http", [(1, 2), (2, 3), (0, 1)]),
    "retransmission collapsing two": ("http", [(0, 1), (1, 2), (0, 2), (2, 3)]),
    "tls in order": ("tls", [(0, 1), (1, 2), (2, 3)]),
    "tls first retransmitted at once": ("tls", [(0, 1), (0, 1), (1, 2), (2, 3)]),
    "tls first after a later one": ("tls", [(1, 2), (0, 1), (2, 3)]),
    "tls first lost, comes last": ("tls", [(1, 2), (2, 3), (0, 1)]),
    "tls all reversed": ("tls", [(2, 3), (1, 2), (0, 1)]),
    "tls middle duplicated late": ("tls", [(0, 1), (1, 2), (2, 3), (1, 2)]),
    "tls first never comes": ("tls", [(1, 2), (2, 3)]),
    "http first never comes": ("http", [(1, 2), (2, 3)]),
    "not http or tls": ("ssh", [(0, 3)]),
}


def crafted_capture(tmp_path) -> tuple[str, list[Packet], dict]:
    pkts: list[Packet] = []
    names = {}
    for n, (name, (kind, order)) in enumerate(CASES.items()):
        flow, _host = crafted(kind, n, order, v6=n % 4 == 3)
        names[flow_of(flow[0])] = name
        pkts += flow
    extra, _ = crafted("tls", 90, [(0, 1), (1, 2), (2, 3)], host=None)  # a ClientHello without SNI
    names[flow_of(extra[0])] = "tls without sni"
    mid, _ = crafted("http", 91, [(0, 1), (1, 2), (2, 3)], handshake=False)  # joined mid-stream
    names[flow_of(mid[0])] = "http mid-stream"
    pkts += extra + mid
    pkts.sort(key=lambda p: p.ts)
    path = str(tmp_path / "crafted.pcap")
    with PcapWriter(path) as w:
        for p in pkts:
            w.write(p.data, p.ts)
    return path, pkts, names


def test_crafted_flows_agree_with_tshark(tmp_path) -> None:
    tshark = need_tool("tshark")
    path, pkts, names = crafted_capture(tmp_path)
    flows = set(names)
    ref = tshark_hosts(tshark, path, flows)

    def named(d: dict) -> dict:
        return {names[f]: h for f, h in d.items()}

    want = named(ref)
    # tshark finds what the names say (so the cases are what they claim)
    assert {k for k, h in want.items() if h is None} == {
        "tls first never comes", "http first never comes", "not http or tls", "tls without sni"}
    tracked, _ = tracker_hosts(pkts)
    assert named(tracked) == want
    assert named(hostfilter_hosts(pkts)) == want
    # Buffering in arrival order (the host learning before) gets the reordered and retransmitted
    # first segments wrong: the cases above do test what they are meant to.
    before = named(arrival_order_hosts(pkts))
    wrong = {k for k in want if before[k] != want[k]}
    assert {"first retransmitted at once", "tls first after a later one", "tls first lost, comes last",
            "first after a later one", "first lost, comes last", "tls all reversed"} <= wrong, wrong


def test_first_segment_after_a_later_one_holds_then_decides() -> None:
    pkts, host = crafted("tls", 1, [(1, 2), (0, 1), (2, 3)])
    tr = HostTracker()
    got = [tr.lookup(p, p.ts) for p in pkts]
    # SYN, SYN-ACK, ACK, the second third (held: a hole before it); the first third fills the
    # hole and the first two thirds, in order, hold the SNI.
    assert got[:4] == [UNKNOWN] * 4 and got[4] == host
    assert all(g == host for g in got[4:]) and tr.learned == 1 and len(tr) == 0
    assert tr.reassembler.stats["out_of_order"] == 1 and len(tr.reassembler) == 0  # forgotten once decided


def test_retransmission_with_other_bytes_first_copy_wins() -> None:
    data = http_request("first.example")
    c = Conn(42000, 80, 0.0).handshake()
    c.client(data, 0, 30).client(data, 0, 30, other=True).client(data, 30, len(data))
    tr = HostTracker()
    got = [tr.lookup(p, p.ts) for p in c.pkts]
    assert got[-1] == "first.example" and tr.reassembler.stats["retransmitted"] == 1
    c2 = Conn(42001, 80, 0.0).handshake()
    c2.client(data, 30, len(data)).client(data, 0, 30, other=True).client(data, 0, 30)
    assert [tr.lookup(p, p.ts) for p in c2.pkts][-1] is None  # the garbled copy came first: no host


def test_gap_waits_for_gap_timeout_and_hold_gives_up() -> None:
    pkts, _ = crafted("http", 2, [(1, 2), (2, 3)])
    tr = HostTracker(gap_timeout=3.0)
    assert {tr.lookup(p, p.ts) for p in pkts[:5]} == {UNKNOWN}
    tr.expire(pkts[4].ts + 2.9)
    assert len(tr) == 1 and tr.lookup(pkts[4], pkts[4].ts + 2.95) is UNKNOWN
    tr.expire(pkts[4].ts + 6.0)
    assert tr.lookup(pkts[4], pkts[4].ts + 6.0) is None and tr.reasons["gap"] == 1 and tr.gave_up == 1
    other, _ = crafted("http", 3, [(1, 2), (2, 3)])
    for p in other[:4]:
        tr.lookup(p, p.ts)
    tr.give_up(other[3], other[3].ts)  # the switch's hold bound
    assert tr.lookup(other[4], other[4].ts) is None and tr.reasons["hold"] == 1 and len(tr) == 0


def test_other_protocols_and_fragments_have_no_host_at_once() -> None:
    tr = HostTracker()
    dns = Packet(ether(ipv4(C, S, 17, udp(C, S, 5000, 53, b"\x12\x34\x01\x00" + b"\0" * 8))))
    assert tr.lookup(dns, 0.0) is None and tr.reasons["no host"] == 1
    icmp = Packet(ether(ipv4(C, S, 1, b"\x08\0\0\0\0\0\0\0")))
    assert tr.lookup(icmp, 0.0) is None
    frag = Packet(ether(ipv4(C, S, 6, b"x" * 24, frag_offset=24)))
    assert tr.lookup(frag, 0.0) is None and len(tr) == 0
    quic_like = Packet(ether(ipv4(C, S, 17, udp(C, S, 5001, 443, b""))))
    assert tr.lookup(quic_like, 0.0) is UNKNOWN  # no payload yet: nothing to decide on


def test_bounds() -> None:
    tr = HostTracker(max_flows=2)
    for n in range(3):
        pkts, _ = crafted("http", 10 + n, [(1, 2)])
        for p in pkts[:4]:
            tr.lookup(p, p.ts)
    assert len(tr) == 2 and tr.reasons["evicted"] == 1 and len(tr.reassembler) == 2
    tr = HostTracker(max_bytes=64)  # more out-of-order bytes than the bound: given up at once
    pkts, _ = crafted("tls", 20, [(1, 2), (2, 3), (0, 1)])
    assert [tr.lookup(p, p.ts) for p in pkts][4] is None and tr.reasons["gap"] == 1


@pytest.mark.parametrize("data,state,why", [
    (b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", FOUND, "http"),
    (tls_hello("b.example"), FOUND, "tls"),
    (b"GET / HTTP/1.1\r\n", MORE, ""),
    (b"SSH-2.0-x\r\n", NO, "no host"),
    (b"GET /" + b"a" * 200, NO, "bound"),
])
def test_peek_host(data: bytes, state: str, why: str) -> None:
    st, host, how = peek_host(data, max_bytes=100)
    assert (st, how) == (state, why) and (host is not None) == (state == FOUND)


def test_sniffer_client_direction_gaps_and_state() -> None:
    sn = HostSniffer()
    assert not sn.data(1, b"") and sn.client == -1  # nothing yet
    assert not sn.data(0, b"GET / HTTP/1.1\r\nHo") and sn.client == 0
    assert not sn.data(1, b"HTTP/1.1 100 Continue\r\n\r\n")  # the server's bytes are not read
    again = HostSniffer.from_list(sn.to_list())
    assert again.data(0, b"st: c.example\r\n") and (again.host, again.kind) == ("c.example", "http")
    assert sn.gap(1) is False and sn.gap(0) and (sn.host, sn.why) == (None, "gap")
    first_gap = HostSniffer()
    assert first_gap.gap(0) and first_gap.why == "gap"
    ended = HostSniffer()
    assert ended.end() and ended.why == "end" and ended.data(0, b"GET") is True
    banner = HostSniffer()
    assert banner.data(1, b"220 smtp.example ESMTP\r\n") and banner.host is None and banner.why == "no host"


def test_profile_uses_the_same_learning() -> None:
    """The planner's offline routing (manager/profile.py) calls HostTracker too: a reordered flow
    gets its host there as well."""
    pkts, host = crafted("http", 30, [(1, 2), (0, 1), (2, 3)])
    tr = HostTracker()
    assert [h for h in (tr.lookup(p, 0.0) for p in pkts) if h is not UNKNOWN][0] == host


def test_udp_first_datagram_decides_alone() -> None:
    tr = HostTracker()
    whole = Packet(ether(ipv4(C, S, 17, udp(C, S, 6000, 80, b"GET / HTTP/1.1\r\nHost: u.example\r\n\r\n"))))
    assert tr.lookup(whole, 0.0) == "u.example"
    a = Packet(ether(ipv4(C, S, 17, udp(C, S, 6001, 80, b"GET / HTTP/1.1\r\n"))))
    b = Packet(ether(ipv4(C, S, 17, udp(C, S, 6001, 80, b"Host: u.example\r\n\r\n"))))
    assert tr.lookup(a, 0.0) is None and tr.lookup(b, 0.1) is None and len(tr) == 0
