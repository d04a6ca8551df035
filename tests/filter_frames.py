"""Frames for the filter tests: a varied, deterministic set of Ethernet frames, the real captures
installed by Debian packages, and a runner that asks the real tcpdump which frames it matches.

Every frame written by :func:`write_numbered` gets its 1-based frame number as its timestamp, so
the frames tcpdump writes back (``-w -``) tell us exactly which numbers matched.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import random
import struct
import subprocess
from collections.abc import Iterable

import warnings
from dataclasses import dataclass

from e2actors.packet.pcap import PcapWriter, open_capture


@dataclass(slots=True)
class MiniPacket:
    """A test frame: captured bytes and the length on the wire (what a filter reads)."""

    data: bytes
    wirelen: int

BCAST = b"\xff" * 6
MAC_A = bytes.fromhex("001122334455")
MAC_B = bytes.fromhex("66778899aabb")
MAC_C = bytes.fromhex("010203040506")
MCAST4 = bytes.fromhex("01005e000001")
MCAST6 = bytes.fromhex("333300000001")

REAL_CAPTURE_GLOBS = [
    "/usr/share/doc/python3-dpkt/examples/data/*.pcap",
    "/usr/share/gocode/src/github.com/google/gopacket/**/*.pcap",
    "/usr/share/gocode/src/github.com/google/gopacket/**/*.pcapng",
]


def eth(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def vlan_tag(tpid: int, vid: int, prio: int = 0) -> bytes:
    return struct.pack("!HH", tpid, (prio << 13) | vid)


def eth_vlan(dst: bytes, src: bytes, tags: list[tuple[int, int]], etype: int, payload: bytes) -> bytes:
    out = dst + src
    for tpid, vid in tags:
        out += vlan_tag(tpid, vid)
    return out + struct.pack("!H", etype) + payload


def ip4(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"", ttl: int = 64,
        frag: int = 0, mf: bool = False, df: bool = False, tos: int = 0, ident: int = 1) -> bytes:
    ihl = 5 + len(options) // 4
    flags = (0x2000 if mf else 0) | (0x4000 if df else 0) | frag
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(payload), ident, flags,
                      ttl, proto, 0, ipaddress.IPv4Address(src).packed,
                      ipaddress.IPv4Address(dst).packed)
    return hdr + options + payload


def ip6(src: str, dst: str, nxt: int, payload: bytes, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nxt, hlim,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def ext6(nxt: int, body: bytes = b"\x00" * 6) -> bytes:
    """A hop-by-hop/destination-options style extension header (8 bytes)."""
    return struct.pack("!BB", nxt, 0) + body


def frag6(nxt: int, offset: int = 0, mf: bool = False, ident: int = 7) -> bytes:
    return struct.pack("!BBHI", nxt, 0, (offset << 3) | (1 if mf else 0), ident)


def tcp(sport: int, dport: int, flags: int = 0x10, payload: bytes = b"", seq: int = 1000,
        options: bytes = b"") -> bytes:
    off = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, off << 4, flags, 65535, 0, 0) + \
        options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0)


def icmp(typ: int, code: int = 0, payload: bytes = b"abcdefgh") -> bytes:
    return struct.pack("!BBHHH", typ, code, 0, 1, 1) + payload


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha,
                       ipaddress.IPv4Address(spa).packed, tha, ipaddress.IPv4Address(tpa).packed)


def llc(dsap: int, ssap: int, body: bytes = b"\x03" + b"\x00" * 40) -> bytes:
    return bytes([dsap, ssap]) + body


def generated_frames() -> list[MiniPacket]:
    """A few hundred varied frames (and truncations); deterministic."""
    F: list[bytes] = []
    hosts4 = ["198.18.0.1", "198.18.0.2", "10.0.0.1", "10.1.2.3", "192.168.1.10", "172.16.5.4"]
    ports = [80, 443, 22, 53, 8080, 1024, 65535, 0, 123, 5000]
    flags = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x29, 0xC2, 0x00]
    rnd = random.Random(1234)
    # IPv4 TCP
    for i, (s, d) in enumerate([(a, b) for a in hosts4 for b in hosts4 if a != b][:18]):
        sp, dp = ports[i % len(ports)], ports[(i * 3 + 1) % len(ports)]
        F.append(eth(MAC_A, MAC_B, 0x0800, ip4(s, d, 6, tcp(sp, dp, flags[i % len(flags)],
                                                             b"GET / HTTP/1.1\r\n" if dp == 80 else b"x" * (i % 7)),
                                                 ttl=(i * 17) % 256, tos=i)))
    # IPv4 with options
    for n_opt in (1, 2, 10):
        F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "198.18.0.1", 6, tcp(1234, 80, 0x02),
                                               options=b"\x01" * (4 * n_opt))))
        F.append(eth(MAC_B, MAC_A, 0x0800, ip4("198.18.0.1", "10.0.0.1", 17, udp(53, 5353, b"dns"),
                                               options=b"\x94\x04\x00\x00" * n_opt)))
    # IPv4 UDP
    for sp, dp in [(5353, 53), (53, 5353), (68, 67), (67, 68), (123, 123), (80, 1000), (1000, 443)]:
        F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.1.2.3", "198.18.0.2", 17, udp(sp, dp, b"payload"))))
    # IPv4 fragments: first (MF), middle, last; the non-first carry port-looking bytes
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, tcp(80, 80, 0x18, b"A" * 24), mf=True)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, tcp(80, 80, 0x02), frag=3, mf=True)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, tcp(80, 80, 0x02), frag=185)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 17, udp(53, 53, b"q" * 8), mf=True)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 17, udp(53, 53), frag=1)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 1, icmp(8), frag=2)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, tcp(22, 80, 0x10), df=True)))
    # ICMP
    for typ, code in [(8, 0), (0, 0), (3, 1), (3, 3), (11, 0), (13, 0), (5, 1)]:
        F.append(eth(MAC_A, MAC_B, 0x0800, ip4("192.168.1.10", "10.0.0.1", 1, icmp(typ, code))))
    # other IPv4 protocols
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 132, sctp(80, 9999))))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 132, sctp(2905, 2905))))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 47, b"\x00\x00\x08\x00" + b"g" * 20)))
    F.append(eth(MCAST4, MAC_B, 0x0800, ip4("10.0.0.1", "224.0.0.22", 2, b"\x22\x00\x00\x00" * 2, ttl=1)))
    F.append(eth(MCAST4, MAC_B, 0x0800, ip4("10.0.0.1", "239.255.255.250", 17, udp(1900, 1900, b"M-SEARCH"))))
    F.append(eth(MCAST4, MAC_B, 0x0800, ip4("10.0.0.1", "224.0.0.18", 112, b"\x21" * 20)))
    F.append(eth(MCAST4, MAC_B, 0x0800, ip4("10.0.0.1", "224.0.0.13", 103, b"\x20" * 20)))
    F.append(eth(BCAST, MAC_B, 0x0800, ip4("10.0.0.1", "255.255.255.255", 17, udp(68, 67, b"dhcp"))))
    F.append(eth(BCAST, MAC_B, 0x0800, ip4("0.0.0.0", "255.255.255.255", 17, udp(68, 67, b"dhcp"))))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "0.0.0.0", 17, udp(1, 2))))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.255.255.255", 17, udp(137, 137))))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 50, b"\x00" * 24)))
    F.append(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 51, b"\x32\x04" + b"\x00" * 22)))
    # ARP / RARP
    F.append(eth(BCAST, MAC_A, 0x0806, arp(1, MAC_A, "10.0.0.1", b"\x00" * 6, "10.0.0.2")))
    F.append(eth(MAC_A, MAC_B, 0x0806, arp(2, MAC_B, "10.0.0.2", MAC_A, "10.0.0.1")))
    F.append(eth(BCAST, MAC_A, 0x0806, arp(1, MAC_A, "198.18.0.1", b"\x00" * 6, "198.18.0.2")))
    F.append(eth(BCAST, MAC_A, 0x8035, arp(3, MAC_A, "0.0.0.0", MAC_A, "0.0.0.0")))
    F.append(eth(BCAST, MAC_A, 0x8035, arp(4, MAC_B, "10.0.0.1", MAC_A, "10.1.2.3")))
    # IPv6
    h6 = ["2001:db8::1", "2001:db8::2", "fe80::1", "2001:db8:1::5", "::1"]
    for i, (s, d) in enumerate([(a, b) for a in h6 for b in h6 if a != b][:12]):
        sp, dp = ports[(i + 2) % len(ports)], ports[(i * 7) % len(ports)]
        if i % 3 == 0:
            F.append(eth(MAC_B, MAC_A, 0x86DD, ip6(s, d, 17, udp(sp, dp, b"six"))))
        else:
            F.append(eth(MAC_B, MAC_A, 0x86DD, ip6(s, d, 6, tcp(sp, dp, flags[i % len(flags)]), hlim=i)))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 58, icmp(128))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::2", "2001:db8::1", 58, icmp(129))))
    F.append(eth(MCAST6, MAC_A, 0x86DD, ip6("fe80::1", "ff02::1:ff00:2", 58, icmp(135) + b"\x00" * 16)))
    F.append(eth(MCAST6, MAC_A, 0x86DD, ip6("fe80::1", "ff02::2", 58, icmp(133))))
    F.append(eth(MCAST6, MAC_A, 0x86DD, ip6("fe80::1", "ff02::1", 0, ext6(58, b"\x05\x02\x00\x00\x01\x00") + icmp(143))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 0, ext6(6) + tcp(80, 4444, 0x02))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 60, ext6(17) + udp(53, 53))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 44, frag6(6, 0, True) + tcp(80, 4444, 0x18, b"z" * 16))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 44, frag6(6, 100) + b"\x00\x50" * 10)))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 44, frag6(17, 0, True) + udp(53, 1053, b"x" * 8))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 44, frag6(58, 0, True) + icmp(128))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 132, sctp(80, 80))))
    F.append(eth(MAC_B, MAC_A, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 59, b"")))
    # VLAN, QinQ, 802.1ad, 0x9100
    F.append(eth_vlan(MAC_A, MAC_B, [(0x8100, 10)], 0x0800, ip4("10.0.0.1", "198.18.0.1", 6, tcp(1234, 80, 0x02))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x8100, 10)], 0x0800, ip4("10.0.0.1", "198.18.0.1", 17, udp(53, 53, b"v"))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x8100, 20)], 0x86DD, ip6("2001:db8::1", "2001:db8::2", 6, tcp(443, 5555, 0x12))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x8100, 4095)], 0x0806, arp(1, MAC_A, "10.0.0.1", b"\x00" * 6, "10.0.0.2")))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x88A8, 100), (0x8100, 10)], 0x0800, ip4("10.0.0.1", "198.18.0.1", 6, tcp(80, 1234, 0x11))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x88A8, 100), (0x8100, 20)], 0x86DD, ip6("2001:db8::2", "2001:db8::1", 17, udp(53, 53))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x9100, 7), (0x8100, 10)], 0x0800, ip4("10.1.2.3", "10.0.0.1", 1, icmp(8))))
    F.append(eth_vlan(BCAST, MAC_B, [(0x8100, 10), (0x8100, 11), (0x8100, 12)], 0x0800, ip4("10.1.2.3", "255.255.255.255", 17, udp(68, 67))))
    F.append(eth_vlan(MAC_A, MAC_B, [(0x8100, 0)], 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, tcp(22, 22, 0x10), options=b"\x01" * 8)))
    # 802.3 / LLC
    F.append(eth(bytes.fromhex("0180c2000000"), MAC_A, 39, llc(0x42, 0x42)))
    F.append(eth(bytes.fromhex("09002b000005"), MAC_A, 45, llc(0xFE, 0xFE)))
    F.append(eth(MAC_B, MAC_A, 50, llc(0xF0, 0xF0)))
    F.append(eth(MAC_B, MAC_A, 50, llc(0x06, 0x06)))
    F.append(eth(MAC_B, MAC_A, 100, llc(0x64, 0x64)))
    F.append(eth(MAC_B, MAC_A, 1500, llc(0xE0, 0xE0)))
    F.append(eth(MAC_B, MAC_A, 1501, llc(0xAA, 0xAA)))
    # other ethertypes
    F.append(eth(MAC_B, MAC_A, 0x6003, b"\x00" * 40))
    F.append(eth(bytes.fromhex("0180c200000e"), MAC_A, 0x88CC, b"\x02\x07" + b"\x00" * 40))
    F.append(eth(MAC_C, MAC_C, 0x0800, ip4("10.0.0.1", "10.0.0.1", 6, tcp(80, 80, 0x3F))))
    # frames with bad or odd IPv4 headers
    F.append(eth(MAC_A, MAC_B, 0x0800, b"\x4f" + b"\x00" * 60))                  # IHL 15 > frame
    F.append(eth(MAC_A, MAC_B, 0x0800, b"\x42\x00\x00\x20\x00\x00\x00\x00\x40\x06" + b"\x00" * 30))  # IHL 2
    F.append(eth(MAC_A, MAC_B, 0x0800, b"\x65" + b"\x00" * 8 + b"\x06" + b"\x00" * 50))  # version 6 in IPv4
    F.append(eth(MAC_A, MAC_B, 0x86DD, b"\x45" + b"\x00" * 5 + b"\x06" + b"\x00" * 60))
    frames = [MiniPacket(f, len(f)) for f in F]
    # truncations: snaplen-cut copies of some frames (caplen < wirelen) and very short frames
    for i, f in enumerate(list(F)):
        if i % 3 == 0:
            for cut in (14, 24, 34, 38, 47, 54, 58):
                if cut < len(f):
                    frames.append(MiniPacket(f[:cut], len(f)))
    for n in (0, 1, 5, 11, 12, 13, 15, 20, 23):
        frames.append(MiniPacket(F[0][:n], n))
    frames.append(MiniPacket(F[0][:13], 1514))
    # padded to the Ethernet minimum, and wirelen larger than the frame (snaplen 64 style)
    for f in F[:40:4]:
        frames.append(MiniPacket((f + b"\x00" * 60)[:max(60, len(f))], max(60, len(f)) + 1000))
    # random frames with plausible ethertypes
    for i in range(60):
        etype = rnd.choice([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, rnd.randrange(65536)])
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 90)))
        if etype == 0x0800 and body:
            body = bytes([rnd.choice([0x45, 0x46, 0x4F, 0x44, 0x41])]) + body[1:]
        f = eth(rnd.choice([MAC_A, MAC_B, BCAST, MCAST4]), MAC_C, etype, body)
        frames.append(MiniPacket(f, len(f) + rnd.choice([0, 0, 7, 1500])))
    return frames


def real_captures() -> list[str]:
    """Paths of the Debian-installed captures (may be empty)."""
    out: list[str] = []
    for g in REAL_CAPTURE_GLOBS:
        out.extend(sorted(glob.glob(g, recursive=True)))
    return out


def ethernet_frames_of(path: str, tmpdir: str, tcpdump: str) -> list[MiniPacket]:
    """Frames of an Ethernet capture (pcapng converted by tcpdump); [] for other link types."""
    src = path
    if path.endswith(".pcapng"):
        src = os.path.join(tmpdir, os.path.basename(path) + ".pcap")
        r = subprocess.run([tcpdump, "-r", path, "-w", src], capture_output=True)
        if r.returncode != 0 or not os.path.exists(src):
            return []
    out: list[MiniPacket] = []
    try:
        with warnings.catch_warnings(), open_capture(src) as r:
            warnings.simplefilter("ignore")  # a truncated last record warns; tcpdump too
            if r.linktype != 1:
                return []
            for _ts, data, wirelen, _lt, _if in r:
                out.append(MiniPacket(data, wirelen))
    except Exception:  # unreadable, or a truncated last record: keep the complete ones (as tcpdump)
        pass
    return out


def write_numbered(path: str, frames: Iterable[MiniPacket]) -> int:
    """Write ``frames`` with timestamp = 1-based frame number."""
    with PcapWriter(path) as w:
        for i, p in enumerate(frames, 1):
            w.write(p.data, float(i), p.wirelen)
        return w.count


class TcpdumpError(Exception):
    pass


def tcpdump_matches(tcpdump: str, path: str, expr: str) -> set[int]:
    """Frame numbers (see :func:`write_numbered`) that tcpdump's filter ``expr`` accepts."""
    r = subprocess.run([tcpdump, "-r", path, "-w", "-", "--", expr], capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace")
        if "expression rejects all packets" in err:
            return set()
        raise TcpdumpError(err.strip().splitlines()[-1] if err.strip() else f"rc={r.returncode}")
    out = r.stdout
    nums: set[int] = set()
    off = 24
    endian = "<" if out[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    while off + 16 <= len(out):
        sec, _frac, caplen, _wl = struct.unpack_from(endian + "IIII", out, off)
        nums.add(sec)
        off += 16 + caplen
    return nums
