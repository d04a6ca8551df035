"""The IDS pipelet, driven directly (setup, on_stream, process) without the runner."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from conftest import need_path

from e2actors.nf.builtin.ids import IDS
from e2actors.nf.pipelet import Verdict
from e2actors.nf.rules import RuleError
from e2actors.packet import traffic
from e2actors.packet.batch import Batch
from e2actors.packet.build import ether, ip, tcp, udp
from e2actors.packet.packet import Packet

ET_TELNET = "/usr/share/gocode/src/github.com/jasonish/go-idsrules/testdata/emerging-telnet.rules"
RULES = [
    'alert tcp any any -> any $HTTP_PORTS (msg:"passwd"; flow:to_server,established; content:"/etc/passwd"; sid:1001;)',
    'alert tcp any $HTTP_PORTS -> any any (msg:"root shell"; flow:from_server; content:"uid=0(root)"; sid:1002;)',
    'alert tcp any any -> any any (msg:"cmd"; flow:to_server; content:"cmd.exe"; nocase; sid:1003;)',
    'alert udp any any -> any 53 (msg:"dns evil"; content:"|04|evil|03|com"; nocase; sid:1004;)',
]
FLOW = (6, b"\xc6\x12\x00\x01", 40000, b"\xc6\x13\x00\x01", 80, ())  # client 198.18.0.1:40000 -> :80


async def ids(rules=RULES, **cfg) -> IDS:
    nf = IDS()
    await nf.setup({"rules": rules, "vars": {"HTTP_PORTS": "[80,8080]"}, **cfg})
    return nf


async def test_first_chunk_safe_then_none() -> None:
    nf = await ids()
    v = nf.on_stream(FLOW, 0, b"GET / HTTP/1.1\r\n")
    assert v == Verdict(port="safe", meta={"verdict": "safe"})
    assert nf.on_stream(FLOW, 0, b"Host: x\r\n\r\n") is None
    assert nf.on_stream(FLOW, 1, b"HTTP/1.1 200 OK\r\n") is None


async def test_split_signature_across_calls_is_unsafe_and_sticky() -> None:
    nf = await ids()
    assert nf.on_stream(FLOW, 0, b"GET /cgi-bin/view.cgi?file=../../../../etc/pa").port == "safe"
    v = nf.on_stream(FLOW, 0, b"sswd HTTP/1.1\r\n")
    assert v.port == "unsafe" and v.sticky
    assert v.meta == {"verdict": "unsafe", "sid": 1001, "msg": "passwd"}
    assert nf.on_stream(FLOW, 0, b"more /etc/passwd") is None  # sticky: no rescan, no new alert
    assert nf.alerts == {1001: 1} and nf.counters["alerts"] == 1


async def test_flow_direction_is_respected() -> None:
    nf = await ids()
    # the server sending "/etc/passwd" is not a to_server match
    assert nf.on_stream(FLOW, 0, b"GET / HTTP/1.1\r\n\r\n").port == "safe"
    assert nf.on_stream(FLOW, 1, b"HTTP/1.1 200 OK\r\n\r\n/etc/passwd") is None
    # the server answering uid=0(root) is a from_server match
    v = nf.on_stream(FLOW, 1, b"uid=0(ro" + b"ot) gid=0")
    assert v.port == "unsafe" and v.meta["sid"] == 1002


async def test_client_is_the_first_packets_sender_as_suricata() -> None:
    # A server-first protocol: the telnet server (port 23, the low end) speaks first.
    rules = ['alert tcp any 23 -> any any (msg:"bad login"; flow:from_server; content:"Login incorrect"; '
             'nocase; sid:7;)']
    nf = await ids(rules)
    flow = (6, b"\x0a\x00\x00\x01", 23, b"\x0a\x00\x00\x02", 50000, ())  # low end = server
    nf.set_client(flow, 1)  # the SYN came from the high end
    nf.set_server(flow, 0)
    assert nf.on_stream(flow, 0, b"login: ").port == "safe"
    assert nf.on_stream(flow, 1, b"root\r\n") is None
    assert nf.on_stream(flow, 0, b"LOGIN INCORRECT\r\n").meta["sid"] == 7
    # Joined mid-stream (no SYN): the first sender is the client, whatever the ports (Suricata
    # with midstream on does the same), so the server's words are "to_server" here.
    nf = await ids(rules)
    assert nf.on_stream(flow, 0, b"login: ").port == "safe"
    assert nf.on_stream(flow, 0, b"LOGIN INCORRECT\r\n") is None
    # A SYN/ACK seen first: its receiver is the client.
    nf = await ids(rules)
    nf.set_server(flow, 0)
    assert nf.on_stream(flow, 0, b"LOGIN INCORRECT\r\n").meta["sid"] == 7


async def test_client_from_syn_via_process_and_first_sender() -> None:
    nf = await ids(['alert tcp any any -> any any (msg:"x"; flow:to_server; content:"HELLO"; sid:8;)'])
    # both ports high: the SYN decides
    a, b = "198.18.0.1", "198.19.0.1"
    syn = Packet(ether(ip(b, a, 6, tcp(b, a, 50001, 40001, flags="S"))))
    await nf.process(Batch([syn]))
    assert nf.take_outputs()["safe"] == [syn] and syn.meta == {"verdict": "safe"}
    flow, d = syn.flow_key, syn.direction
    assert nf.on_stream(flow, 1 - d, b"HELLO").port == "safe"  # from the server: no match
    assert nf.on_stream(flow, d, b"HEL") is None
    assert nf.on_stream(flow, d, b"LO").meta["sid"] == 8
    # without a SYN, the first sender is the client
    nf2 = await ids(['alert tcp any any -> any any (msg:"x"; flow:to_server; content:"HELLO"; sid:8;)'])
    f2 = (6, b"\x01", 40000, b"\x02", 50000, ())
    assert nf2.on_stream(f2, 1, b"HELLO").meta["sid"] == 8


async def test_header_ports_are_matched() -> None:
    nf = await ids()
    flow = (6, b"\x01", 443, b"\x02", 50000, ())  # server on 443: not in $HTTP_PORTS
    assert nf.on_stream(flow, 1, b"GET /etc/passwd").port == "safe"
    assert nf.on_stream(flow, 1, b" cmd.EXE").meta["sid"] == 1003  # rule 1003 has any ports


async def test_tcp_after_unsafe_follows_in_process() -> None:
    nf = await ids()
    a, b = "198.18.0.1", "198.19.0.1"
    pkts = [Packet(ether(ip(a, b, 6, tcp(a, b, 40000, 80, flags="S")))),
            Packet(ether(ip(b, a, 6, tcp(b, a, 80, 40000, flags="SA")))),
            Packet(ether(ip(a, b, 6, tcp(a, b, 40000, 80, flags="A"))))]
    await nf.process(Batch(pkts[:2]))
    flow = pkts[0].flow_key
    assert nf.on_stream(flow, pkts[0].direction, b"GET /etc/passwd").port == "unsafe"
    await nf.process(Batch(pkts[2:]))
    out = nf.take_outputs()
    assert out["unsafe"] == [pkts[2]] and pkts[2].meta["sid"] == 1001


async def test_established_needs_the_syn_answered() -> None:
    """flow:established: a SYN never answered is not established; mid-stream flows are."""
    nf = await ids()
    flow = FLOW
    nf.set_client(flow, 0)  # a SYN, no SYN/ACK
    assert nf.on_stream(flow, 0, b"GET /etc/passwd").port == "safe"  # 1001 needs established
    assert nf.on_stream(flow, 0, b" cmd.exe").meta["sid"] == 1003  # 1003 does not
    nf = await ids()
    assert nf.on_stream(flow, 0, b"GET /etc/passwd").meta["sid"] == 1001  # mid-stream: established


async def test_udp_packets_through_process() -> None:
    nf = await ids()
    c, s = "198.18.0.9", "198.19.0.53"
    q_bad = Packet(ether(ip(c, s, 17, udp(c, s, 5353, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                                                  b"\x04EVIL\x03com\x00\x00\x01\x00\x01"))))
    q_ok = Packet(ether(ip(c, s, 17, udp(c, s, 5353, 53, b"\x12\x35\x01\x00\x07example\x03com\x00"))))
    q_wrong_port = Packet(ether(ip(c, s, 17, udp(c, s, 5353, 5300, b"\x04evil\x03com"))))
    await nf.process(Batch([q_bad, q_ok, q_wrong_port]))
    out = nf.take_outputs()
    assert out["unsafe"] == [q_bad] and out["safe"] == [q_ok, q_wrong_port]
    assert q_bad.meta == {"verdict": "unsafe", "sid": 1004, "msg": "dns evil"}
    assert q_ok.meta == {"verdict": "safe"}
    assert nf.alerts == {1004: 1}


async def test_state_moves_between_instances_mid_pattern() -> None:
    a = await ids()
    assert a.on_stream(FLOW, 0, b"GET /x?f=../etc/pas").port == "safe"
    data = msgpack.unpackb(msgpack.packb(a.export_state()), raw=False, strict_map_key=False)
    b = await ids()
    b.import_state(data)
    v = b.on_stream(FLOW, 0, b"swd")
    assert v is not None and v.port == "unsafe"
    assert b.counters["flows"] == 1


async def test_state_under_other_rules_keeps_offsets_only() -> None:
    a = await ids()
    a.on_stream(FLOW, 0, b"GET cmd.ex")
    b = await ids(RULES[:1])
    b.import_state(msgpack.unpackb(msgpack.packb(a.export_state()), raw=False))
    assert b.on_stream(FLOW, 0, b"e /etc/passwd").port == "unsafe"


async def test_flow_bound_evicts() -> None:
    nf = await ids(max_flows=10)
    for i in range(50):
        nf.on_stream((6, b"\x01", 40000 + i, b"\x02", 80, ()), 0, b"GET /")
    assert len(nf.flows) == 10 and nf.flows.evicted == 40


async def test_rules_from_file_and_bad_rule(tmp_path) -> None:
    p = tmp_path / "local.rules"
    p.write_text("\n".join(RULES) + "\n")
    nf = IDS()
    await nf.setup({"rules": str(p), "vars": {"HTTP_PORTS": "80"}})
    assert len(nf.rules) == 4
    p.write_text('alert tcp any any -> any any (content:"x"; sid:1;)\nalert tcp any any -> any any (content:"y";)\n')
    with pytest.raises(RuleError, match=r"local\.rules:2: the rule has no sid"):
        await IDS().setup({"rules": str(p)})


async def test_real_et_rules_in_the_ids() -> None:
    path = need_path(ET_TELNET, "Emerging Threats telnet rules (Debian golang-github-jasonish-go-idsrules-dev)")
    nf = IDS()
    await nf.setup({"rules": path})
    assert nf.counters["rules"] == 10 and nf.counters["rules_skipped"] == 0
    flow = (6, b"\x0a\x00\x00\x01", 23, b"\x0a\x00\x00\x02", 50000, ())
    assert nf.on_stream(flow, 1, b"wget http://x/bin/bus").port == "safe"
    v = nf.on_stream(flow, 1, b"ybox; chmod")
    assert v.meta["sid"] == 2023016
    flow2 = (6, b"\x0a\x00\x00\x01", 23, b"\x0a\x00\x00\x03", 50000, ())
    nf.set_client(flow2, 1)  # the telnet client's SYN (the server speaks first)
    nf.on_stream(flow2, 0, b"\r\n\r\nUser Access Verification\r\n\r\nPassword required, but none set")
    assert nf.flows[flow2][1] == 1  # safe: the content is past depth 31
    flow3 = (6, b"\x0a\x00\x00\x01", 23, b"\x0a\x00\x00\x04", 50000, ())
    nf.set_client(flow3, 1)
    assert nf.on_stream(flow3, 0, b"Password required, but none set\r\n").meta["sid"] == 2008860


# --- on generated traffic: reassembled here by sequence number, fed segment by segment -------------
def streams(packets: list[Packet]) -> dict[tuple, list[tuple[int, bytes]]]:
    """Per TCP flow: the payload segments in stream order (dedup by seq), as (direction, bytes)."""
    seen: dict[tuple, dict[tuple[int, int], bytes]] = {}
    order: dict[tuple, list[tuple[int, int, int]]] = {}
    for i, p in enumerate(packets):
        if p.malformed or p.proto != 6 or not p.payload_len:
            continue
        key = p.flow_key
        d = p.direction
        segs = seen.setdefault(key, {})
        if (d, p.tcp_seq) not in segs:
            segs[(d, p.tcp_seq)] = p.payload
            order.setdefault(key, []).append((d, p.tcp_seq, i))
    out: dict[tuple, list[tuple[int, bytes]]] = {}
    for key, lst in order.items():
        # per direction in seq order, interleaved by first arrival of each direction's segment
        by_dir: dict[int, list[tuple[int, int]]] = {}
        for d, seq, i in lst:
            by_dir.setdefault(d, []).append((seq, i))
        merged = []
        for d, xs in by_dir.items():
            arrivals = sorted(i for _, i in xs)
            for (seq, _), i in zip(sorted(xs), arrivals):
                merged.append((i, d, seen[key][(d, seq)]))
        out[key] = [(d, b) for _, d, b in sorted(merged)]
    return out


async def test_generated_attack_traffic() -> None:
    pkts = traffic.generate(flows=300, seed=3, profile="attack")
    nf = await ids()
    verdict: dict[tuple, str] = {}
    sigs: dict[tuple, bool] = {}
    for flow, segs in streams(pkts).items():
        whole = {0: b"", 1: b""}
        for d, data in segs:
            whole[d] += data
            v = nf.on_stream(flow, d, data)
            if v is not None:
                verdict[flow] = v.port
        sigs[flow] = any(s in whole[0] + whole[1] for s in traffic.SIGNATURES)
    assert sum(sigs.values()) > 50
    for flow, has in sigs.items():
        assert verdict[flow] == ("unsafe" if has else "safe"), flow
    assert sum(nf.alerts.values()) == sum(sigs.values())


# --- issue 15: direction on UDP, HTTP buffers, flowbits; issue 14: the build stays off the loop --------
async def test_udp_client_is_the_first_datagrams_sender() -> None:
    """A non-matching first datagram fixes the client: the server's reply is to_client."""
    nf = await ids(['alert udp any any -> any any (msg:"q"; flow:to_server; content:"QUERYX"; sid:11;)',
                    'alert udp any any -> any any (msg:"e"; flow:established; content:"PONGX"; sid:13;)'])
    c, s = "198.18.0.9", "198.19.0.53"
    first = Packet(ether(ip(c, s, 17, udp(c, s, 5353, 53, b"hello PONGX"))))
    reply = Packet(ether(ip(s, c, 17, udp(s, c, 53, 5353, b"QUERYX PONGX"))))
    again = Packet(ether(ip(c, s, 17, udp(c, s, 5353, 53, b"QUERYX"))))
    await nf.process(Batch([first, reply, again]))
    out = nf.take_outputs()
    assert out["safe"] == [first]  # PONGX in the first datagram: not established yet
    assert out["unsafe"] == [reply, again]
    assert reply.meta["sid"] == 13 and again.meta["sid"] == 11


async def test_http_buffers_and_flowbits_in_the_ids() -> None:
    nf = await ids(['alert tcp any any -> any any (msg:"admin"; flow:to_server; http.method; content:"POST"; '
                    'http.uri; content:"/admin/passwd"; http.host; content:"example.com"; sid:21;)',
                    'alert tcp any any -> any any (msg:"set"; content:"LOGIN"; flowbits:set,in; noalert; sid:22;)',
                    'alert tcp any any -> any any (msg:"isset"; content:"WELCOME"; flowbits:isset,in; sid:23;)'],
                   stop_on_alert=False)
    assert nf.on_stream(FLOW, 0, b"POST /admin/%70ass").port == "safe"
    assert nf.on_stream(FLOW, 0, b"wd HTTP/1.1\r\nHost: WWW.EXAMPLE.com\r\n\r\n").meta["sid"] == 21
    f2 = (6, b"\x01", 40001, b"\x02", 23, ())
    assert nf.on_stream(f2, 1, b"WELCOME").port == "safe"  # the bit is not set
    assert nf.on_stream(f2, 0, b"LOGIN bob") is None  # noalert
    assert nf.on_stream(f2, 1, b"WELCOME bob").meta["sid"] == 23
    assert nf.alerts == {21: 1, 23: 1}


async def test_rule_build_does_not_block_the_event_loop() -> None:
    """A big rule set compiles in a thread: other tasks run while setup() is in progress."""
    rules = [f'alert tcp any any -> any any (msg:"r{i}"; content:"pattern-{i:06d}-xyz"; '
             f'content:"second-{i}"; distance:0; sid:{i + 1};)' for i in range(6000)]
    nf = IDS()
    task = asyncio.create_task(nf.setup({"rules": rules}))
    turns = 0
    while not task.done():
        turns += 1
        await asyncio.sleep(0.001)
    await task
    assert turns > 1 and len(nf.rules) == 6000
