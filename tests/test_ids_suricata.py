"""The IDS against the real Suricata: same rules, same pcap, alerts compared per (flow, sid).

The pcap is crafted here (e2actors.packet.build): TCP flows with split, reordered, retransmitted and
overlapping segments, mid-stream flows, a SYN never answered, HTTP requests, UDP both ways, IPv6
and VLAN. Suricata runs on it with a minimal suricata.yaml written by the test (midstream on,
checksum validation off, one host-os policy for every address); the IDS runs over the same file
with ``run_pipelet`` and the reassembly overlap policy ``bsd`` (the one Suricata 7 applied under
every policy we tried). Every alert must be equal, except the differences docs/ids.md lists
(:data:`KNOWN`): those must show up exactly as listed, so a fix is noticed too.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool

from e2actors.nf.builtin.ids import IDS
from e2actors.packet.build import ether, fragment, ip, tcp, udp
from e2actors.packet.pcap import write_pcap
from e2actors.testing import arun_pipelet

RULES = [
    'alert tcp any any -> any any (msg:"split"; flow:to_server,established; content:"EVIL-ONE"; sid:1;)',
    'alert tcp any any -> any any (msg:"to client"; flow:to_client; content:"EVIL-TWO"; sid:2;)',
    'alert tcp any any -> any any (msg:"relative"; content:"HDR"; content:"TAIL"; distance:2; within:6; sid:3;)',
    'alert tcp any any -> any any (msg:"pcre"; content:"user="; pcre:"/^[a-z]{3,8}[0-9]+,/R"; sid:4;)',
    'alert tcp any any -> any any (msg:"isdataat"; content:"LEN:"; isdataat:20,relative; sid:5;)',
    'alert tcp any any -> any any (msg:"byte_test"; content:"|de ad|"; byte_test:2,>,1000,0,relative; sid:6;)',
    'alert tcp any any -> any any (msg:"login"; flow:to_server; content:"LOGIN"; flowbits:set,logged; '
    'flowbits:noalert; sid:7;)',
    'alert tcp any any -> any any (msg:"welcome after login"; flow:to_client; content:"WELCOME"; '
    'flowbits:isset,logged; sid:8;)',
    'alert tcp any any -> any any (msg:"http"; flow:to_server,established; http.method; content:"POST"; '
    'http.uri; content:"/admin/"; http.host; content:"example.com"; http.header; content:"X-Evil|3a| 1"; sid:9;)',
    'alert tcp any any -> any any (msg:"http uri modifier"; content:"passwd"; http_uri; sid:10;)',
    'alert udp any any -> any any (msg:"udp to server"; flow:to_server; content:"QUERYX"; sid:11;)',
    'alert udp any any -> any any (msg:"udp to client"; flow:to_client; content:"ANSWERX"; sid:12;)',
    'alert udp any any -> any any (msg:"udp established"; flow:established; content:"PONGX"; sid:13;)',
    'alert tcp any any -> any any (msg:"not established"; flow:not_established; content:"KNOCK"; sid:14;)',
    'alert tcp any any -> any any (msg:"negated"; content:"GOOD"; content:!"BAD"; distance:0; sid:15;)',
    'alert tcp any any -> any any (msg:"dsize"; dsize:>300; content:"BIGPKT"; sid:16;)',
]
C, S = "198.18.0.1", "198.19.0.2"
C6, S6 = "2001:2::1", "2001:2::2"
YAML = """%YAML 1.1
---
vars:
  address-groups: {{HOME_NET: "any", EXTERNAL_NET: "any"}}
  port-groups: {{HTTP_PORTS: "80"}}
default-log-dir: {log}
outputs:
  - eve-log: {{enabled: yes, filetype: regular, filename: eve.json, types: [alert]}}
logging: {{default-log-level: warning, outputs: [{{console: {{enabled: yes}}}}]}}
stream:
  midstream: true
  checksum-validation: no
  reassembly: {{depth: 1mb}}
host-os-policy:
  {policy}: [0.0.0.0/0, "::/0"]
app-layer:
  protocols:
    http: {{enabled: yes}}
"""


class Trace:
    """Builds the crafted capture: one flow after another, each on its own ports."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.t = 1.0
        self.port = 40000

    def add(self, frame: bytes) -> None:
        self.frames.append((self.t, frame))
        self.t += 0.001

    def tcp_flow(self, segs: list[tuple[str, int, bytes]], *, handshake: bool = True, syn_only: bool = False,
                 v6: bool = False, vlan: int | None = None, fin: bool = True, ack_first: bool = False) -> None:
        """``segs``: (who, offset in that side's stream, bytes) with who "c" or "s"."""
        self.port += 1
        cp, sp = self.port, 80
        c, s = (C6, S6) if v6 else (C, S)
        isn = {"c": 1000, "s": 5000}
        vl = (vlan,) if vlan is not None else ()

        def frame(who: str, seq: int, ack: int, flags: str, payload: bytes = b"") -> bytes:
            src, dst, sport, dport = (c, s, cp, sp) if who == "c" else (s, c, sp, cp)
            return ether(ip(src, dst, 6, tcp(src, dst, sport, dport, seq=seq, ack=ack, flags=flags,
                                             payload=payload)), vlans=vl)

        sent = {"c": 0, "s": 0}
        if ack_first:  # a mid-stream capture that starts with the server's pure ACK
            self.add(frame("s", isn["s"] + 1, isn["c"] + 1, "A"))
        if handshake:
            self.add(frame("c", isn["c"], 0, "S"))
            if not syn_only:
                self.add(frame("s", isn["s"], isn["c"] + 1, "SA"))
                self.add(frame("c", isn["c"] + 1, isn["s"] + 1, "A"))
        flags = "P" if syn_only else "PA"
        for who, off, data in segs:
            other = "s" if who == "c" else "c"
            self.add(frame(who, isn[who] + 1 + off, isn[other] + 1 + sent[other], flags, data))
            sent[who] = max(sent[who], off + len(data))
        if fin and not syn_only:
            ends = {w: isn[w] + 1 + sent[w] for w in "cs"}
            self.add(frame("c", ends["c"], ends["s"], "FA"))
            self.add(frame("s", ends["s"], ends["c"] + 1, "FA"))
            self.add(frame("c", ends["c"] + 1, ends["s"] + 1, "A"))

    def raw(self, frames: list[bytes]) -> None:
        for f in frames:
            self.add(f)

    def udp_fragmented(self, data: bytes, mtu: int = 1480, reverse: bool = False) -> None:
        """One client datagram cut into IP fragments (``reverse``: the last fragment first)."""
        self.port += 1
        pieces = [ether(f) for f in fragment(ip(C, S, 17, udp(C, S, self.port, 53, data)), mtu)]
        for f in (pieces[::-1] if reverse else pieces):
            self.add(f)

    def udp_flow(self, dgrams: list[tuple[str, bytes]]) -> None:
        self.port += 1
        for who, data in dgrams:
            if who == "c":
                self.add(ether(ip(C, S, 17, udp(C, S, self.port, 53, data))))
            else:
                self.add(ether(ip(S, C, 17, udp(S, C, 53, self.port, data))))


def build() -> tuple[Trace, dict[str, int]]:
    """The crafted flows; returns the trace and each scenario's client port."""
    t = Trace()
    ports: dict[str, int] = {}

    def mark(name: str) -> None:
        ports[name] = t.port

    t.tcp_flow([("c", 0, b"GET /x EVIL-"), ("c", 12, b"ONE HTTP/1.0\r\n\r\n"), ("s", 0, b"HTTP/1.0 200 OK\r\n\r\nEVIL-TWO")])
    mark("split both ways")
    t.tcp_flow([("c", 9, b"-ONE tail"), ("c", 0, b"0123 EVIL")])  # the second segment first
    mark("reordered")
    t.tcp_flow([("c", 0, b"aaaa EVIL-ONE"), ("c", 0, b"aaaa EVIL-ONE"), ("c", 13, b" more")])
    mark("retransmitted")
    # Overlaps with different bytes, behind a hole (offsets 0-4 come last):
    # new segment starts before the buffered one -> its bytes win (bsd/Suricata): "EVIL-ONE"
    t.tcp_flow([("c", 9, b"XX!!!"), ("c", 4, b"EVIL-ONE!"), ("c", 0, b"....")])
    mark("overlap new starts before")
    # new segment starts after the buffered one -> the buffered bytes stay: no "EVIL-ONE"
    t.tcp_flow([("c", 4, b"EVIL-OXX"), ("c", 10, b"NE"), ("c", 0, b"....")])
    mark("overlap old kept")
    t.tcp_flow([("c", 0, b"HELLO EVIL-ONE"), ("s", 0, b"EVIL-TWO")], handshake=False, fin=False)
    mark("midstream client first")
    t.tcp_flow([("s", 0, b"EVIL-TWO banner"), ("c", 0, b"EVIL-ONE")], handshake=False, fin=False)
    mark("midstream server speaks first")
    t.tcp_flow([("c", 0, b"EVIL-ONE"), ("s", 0, b"EVIL-TWO")], handshake=False, fin=False, ack_first=True)
    mark("midstream pure ACK first")
    t.tcp_flow([("c", 0, b"KNOCK EVIL-ONE")], syn_only=True)
    mark("syn never answered")
    t.tcp_flow([("c", 0, b"HDR--TAIL x"), ("c", 11, b" HDR----------TAIL")])
    mark("relative within")
    t.tcp_flow([("c", 0, b"a user=Bob42, b user=bob1,")])
    mark("pcre relative")
    t.tcp_flow([("c", 0, b"LEN:" + b"x" * 30), ("s", 0, b"LEN:short")])
    mark("isdataat")
    t.tcp_flow([("c", 0, b"\xde\xad\x10\x00"), ("s", 0, b"\xde\xad\x00\x10")])
    mark("byte_test")
    t.tcp_flow([("c", 0, b"LOGIN bob\r\n"), ("s", 0, b"WELCOME bob\r\n")])
    mark("flowbits set then isset")
    t.tcp_flow([("c", 0, b"HI\r\n"), ("s", 0, b"WELCOME stranger\r\n")])
    mark("flowbits never set")
    req = (b"POST /admin/%70asswd?x=1 HTTP/1.1\r\nHost: WWW.Example.COM\r\nUser-Agent: t\r\n"
           b"X-Evil: 1\r\nContent-Length: 4\r\n\r\nbody")
    t.tcp_flow([("c", 0, req[:30]), ("c", 30, req[30:])])
    mark("http split request")
    t.tcp_flow([("c", 0, req.replace(b"COM", b"COM:80"))])
    mark("http host with a port")
    t.tcp_flow([("c", 0, b"GET /admin/ HTTP/1.1\r\nHost: example.com\r\nX-Evil: 0\r\n\r\n")])
    mark("http header differs")
    t.tcp_flow([("c", 0, b"GOOD then BAD"), ("s", 0, b"GOOD only")])
    mark("negated relative")
    t.tcp_flow([("c", 0, b"BIGPKT" + b"." * 400), ("s", 0, b"BIGPKT small")])
    mark("dsize")
    t.tcp_flow([("c", 0, b"x EVIL-ONE"), ("s", 0, b"y EVIL-TWO")], v6=True)
    mark("ipv6")
    t.tcp_flow([("c", 0, b"x EVIL-ONE"), ("s", 0, b"y EVIL-TWO")], vlan=100)
    mark("vlan")
    t.udp_flow([("c", b"hello"), ("s", b"QUERYX ANSWERX PONGX")])
    mark("udp server matches to_server pattern")
    t.udp_flow([("c", b"QUERYX PONGX"), ("s", b"ANSWERX PONGX")])
    mark("udp both ways")
    # A signature across the boundary of two IP fragments: found in the reassembled datagram.
    t.udp_fragmented(b"a" * 1470 + b"QUERYX" + b"b" * 1600)
    mark("udp fragments")
    t.udp_fragmented(b"c" * 1473 + b"QUERYX" + b"d" * 1600, reverse=True)
    mark("udp fragments reversed")
    return t, ports


#: Differences with Suricata 7.0, each documented in docs/ids.md: (scenario, sid, who alerts).
KNOWN: set[tuple[str, int, str]] = {
    # Suricata 7.0.10 (libhtp) gave no http.host match for "Host: WWW.Example.COM:80"; we strip the port.
    ("http host with a port", 9, "ids only"),
}


def flow_id(proto: int, a: str, pa: int, b: str, pb: int) -> tuple:
    ends = sorted([(ipaddress.ip_address(a), pa), (ipaddress.ip_address(b), pb)])
    return (proto, *ends[0], *ends[1])


def suricata_alerts(pcap: Path, rules: Path, tmp: Path, policy: str = "bsd") -> set[tuple]:
    exe = need_tool("suricata")
    log = tmp / "suricata"
    log.mkdir()
    conf = tmp / "suricata.yaml"
    conf.write_text(YAML.format(log=log, policy=policy))
    p = subprocess.run([exe, "-r", str(pcap), "-S", str(rules), "-l", str(log), "-c", str(conf), "-k", "none"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = set()
    for line in (log / "eve.json").read_text().splitlines():
        e = json.loads(line)
        if e.get("event_type") == "alert":
            proto = {"TCP": 6, "UDP": 17}[e["proto"]]
            out.add((flow_id(proto, e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"]),
                     e["alert"]["signature_id"]))
    return out


async def ids_alerts(pcap: Path, rules: Path, overlap: str = "bsd") -> set[tuple]:
    nf = IDS()
    await arun_pipelet(nf, str(pcap), config={"rules": str(rules), "stop_on_alert": False, "overlap": overlap})
    out = set()
    for flow, _direction, sid in nf.alert_log:
        proto, a, pa, b, pb = flow[:5]
        out.add((flow_id(proto, str(ipaddress.ip_address(a)), pa, str(ipaddress.ip_address(b)), pb), sid))
    return out


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    tmp = tmp_path_factory.mktemp("suricata")
    t, ports = build()
    pcap = tmp / "crafted.pcap"
    write_pcap(pcap, t.frames)
    rules = tmp / "test.rules"
    rules.write_text("\n".join(RULES) + "\n")
    return pcap, rules, ports


def by_scenario(alerts: set[tuple], ports: dict[str, int]) -> dict[str, set[int]]:
    names = {p: n for n, p in ports.items()}
    out: dict[str, set[int]] = {n: set() for n in ports}
    for fid, sid in alerts:
        port = next(p for p in (fid[2], fid[4]) if p in names)
        out[names[port]].add(sid)
    return out


async def test_ids_alerts_equal_suricata_per_flow_and_sid(crafted, tmp_path) -> None:
    pcap, rules, ports = crafted
    ref = by_scenario(suricata_alerts(pcap, rules, tmp_path), ports)
    ours = by_scenario(await ids_alerts(pcap, rules), ports)
    diff = {(n, sid, "suricata only") for n in ports for sid in ref[n] - ours[n]}
    diff |= {(n, sid, "ids only") for n in ports for sid in ours[n] - ref[n]}
    assert diff == KNOWN, (ref, ours)
    # The scenarios test what they claim (Suricata's answer is not trivially empty).
    assert ref["split both ways"] == {1, 2} and ref["overlap new starts before"] == {1}
    assert 1 not in ref["overlap old kept"] and ref["flowbits set then isset"] == {8}
    assert 11 not in ref["udp server matches to_server pattern"] and ref["udp both ways"] == {11, 12, 13}
    assert ref["http split request"] == {9, 10} and ref["ipv6"] == ref["vlan"] == {1, 2}
    assert ref["udp fragments"] == ref["udp fragments reversed"] == {11}  # (reassembled by both)


async def test_overlap_policy_is_selectable(crafted) -> None:
    """Under ``first`` the buffered bytes win, so the evasion in "overlap new starts before" hides
    EVIL-ONE from the IDS (Suricata sees it); ``last`` takes the new copy everywhere."""
    pcap, rules, ports = crafted
    first = by_scenario(await ids_alerts(pcap, rules, "first"), ports)
    last = by_scenario(await ids_alerts(pcap, rules, "last"), ports)
    assert 1 not in first["overlap new starts before"] and 1 not in first["overlap old kept"]
    assert 1 in last["overlap new starts before"] and 1 in last["overlap old kept"]


@pytest.mark.parametrize("policy", ["linux", "windows"])
async def test_suricata_policies_give_the_bsd_stream_here(crafted, tmp_path, policy) -> None:
    """Why the IDS runs with ``overlap: bsd`` above: Suricata 7's other host-os policies gave the
    same alerts on these overlaps (so the comparison holds for them too)."""
    pcap, rules, ports = crafted
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert suricata_alerts(pcap, rules, tmp_path / "a", "bsd") == suricata_alerts(pcap, rules, tmp_path / "b", policy)
