"""Checksums and header rewriting, checked against dpkt's computation and tshark's verdicts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dpkt
import pytest
from conftest import need_tool
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.packet.build import echo_rest, ether, icmp, icmp6, ipv4, ipv6, tcp, udp
from e2actors.packet.checksum import (
    fix_checksums,
    internet_checksum,
    ones_sum,
    rewrite,
    verify_checksums,
)
from e2actors.packet.packet import Packet, parse_addr
from e2actors.packet.pcap import PcapWriter

A, B = "198.18.0.1", "198.19.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


def naive_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@settings(derandomize=True)
@given(st.binary(max_size=300))
def test_internet_checksum_matches_naive_and_dpkt(data: bytes) -> None:
    c = internet_checksum(data)
    assert c == naive_checksum(data)
    assert c == dpkt.dpkt.in_cksum(data)


def test_ones_sum_edge_cases() -> None:
    assert ones_sum(b"") == 0 and ones_sum(b"\0\0") == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF and ones_sum(b"\xff\xfe\x00\x01") == 0xFFFF
    assert internet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0x220D  # RFC 1071's example


def _dpkt_recomputed(frame: bytes) -> bytes:
    """Let dpkt recompute every checksum of the frame from scratch (its own code path)."""
    e = dpkt.ethernet.Ethernet(frame)
    ip = e.data
    if isinstance(ip, dpkt.ip.IP):
        ip.sum = 0
    l4 = ip.data
    if hasattr(l4, "sum"):
        l4.sum = 0
    return bytes(e)


FRAMES = [
    ether(ipv4(A, B, 6, tcp(A, B, 40000, 80, seq=1, ack=2, flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"))),
    ether(ipv4(A, B, 6, tcp(A, B, 1, 2, flags="S", options=b"\x02\x04\x05\xb4"), options=b"\x01\x01\x01\x01")),
    ether(ipv4(A, B, 17, udp(A, B, 53, 3333, b"odd-length!"))),
    ether(ipv4(A, B, 1, icmp(8, 0, echo_rest(7, 1), b"ping-data"))),
    ether(ipv6(A6, B6, 6, tcp(A6, B6, 443, 5000, flags="SA", payload=b"x" * 33))),
    ether(ipv6(A6, B6, 17, udp(A6, B6, 5353, 5353, b"mdns"))),
    ether(ipv6(A6, B6, 58, icmp6(A6, B6, 128, 0, echo_rest(1, 1), b"v6 ping"))),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_builder_checksums_match_dpkt(frame: bytes) -> None:
    assert _dpkt_recomputed(frame) == frame
    p = Packet(frame)
    assert verify_checksums(p) and all(verify_checksums(p).values())
    assert fix_checksums(p) == frame


@pytest.mark.parametrize("frame", FRAMES)
def test_fix_checksums_repairs_zeroed_fields(frame: bytes) -> None:
    p = Packet(frame)
    buf = bytearray(frame)
    if p.ethertype == 0x0800:
        buf[24:26] = b"\xde\xad"
    at = p.l4_offset + {6: 16, 17: 6, 1: 2, 58: 2}[p.proto]
    buf[at : at + 2] = b"\x12\x34"
    broken = Packet(bytes(buf))
    assert not all(verify_checksums(broken).values())
    assert fix_checksums(broken) == frame


V4 = [f for f in FRAMES if Packet(f).ethertype == 0x0800]


@settings(derandomize=True, max_examples=200)
@given(
    st.sampled_from(V4),
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
)
def test_incremental_rewrite_equals_full_recompute(frame: bytes, s: bytes, d: bytes, sp: int, dp: int) -> None:
    p = Packet(frame)
    ports = p.sport >= 0
    out = rewrite(p, src=s, dst=d, sport=sp if ports else None, dport=dp if ports else None)
    q = Packet(out)
    assert (q.src, q.dst) == (s, d)
    if ports:
        assert (q.sport, q.dport) == (sp, dp)
    assert all(verify_checksums(q).values())
    # incremental and full agree, up to the +0/-0 ambiguity of one's complement (RFC 1624 sec. 3)
    assert fix_checksums(q) == out


@settings(derandomize=True, max_examples=100)
@given(
    st.sampled_from([f for f in FRAMES if Packet(f).ethertype == 0x86DD]),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 65535),
)
def test_rewrite_ipv6(frame: bytes, s: bytes, sp: int) -> None:
    p = Packet(frame)
    out = rewrite(p, src=s, sport=sp if p.sport >= 0 else None)
    q = Packet(out)
    assert q.src == s and all(verify_checksums(q).values())


def test_rewrite_keeps_udp_zero_checksum_and_refuses_nonsense() -> None:
    f = ether(ipv4(A, B, 17, udp(A, B, 1, 2, b"data", checksum=0)))
    out = Packet(rewrite(Packet(f), src=parse_addr("10.0.0.1"), sport=99))
    assert out.data[out.l4_offset + 6 : out.l4_offset + 8] == b"\0\0" and out.sport == 99
    assert verify_checksums(out) == {"ip": True}
    with pytest.raises(ValueError, match="malformed"):
        rewrite(Packet(b"\0" * 5), sport=1)
    with pytest.raises(ValueError, match="bytes for an IPv4"):
        rewrite(Packet(FRAMES[0]), src=bytes(16))
    with pytest.raises(ValueError, match="no ports"):
        rewrite(Packet(FRAMES[3]), sport=1)


def test_rewrite_fragment_changes_ip_only() -> None:
    later = Packet(ether(ipv4(A, B, 6, b"y" * 24, frag_offset=24, ident=7)))
    out = Packet(rewrite(later, dst=parse_addr("10.1.1.1")))
    assert out.dst == parse_addr("10.1.1.1") and verify_checksums(out) == {"ip": True}


def test_tshark_finds_no_bad_checksum(tmp_path: Path) -> None:
    """Frames we build, rewrite and fix pass Wireshark's own checksum validation."""
    tshark = need_tool("tshark")
    frames = list(FRAMES)
    for f in FRAMES:
        p = Packet(f)
        alen = len(p.src)
        frames.append(
            rewrite(
                p, src=bytes(range(1, alen + 1)), dst=bytes(range(50, 50 + alen)), sport=12345 if p.sport >= 0 else None
            )
        )
    path = tmp_path / "sums.pcap"
    with PcapWriter(path) as w:
        for i, f in enumerate(frames):
            w.write(f, ts=float(i))
    args = [
        tshark,
        "-n",
        "-r",
        str(path),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "ip.checksum.status",
        "-e",
        "tcp.checksum.status",
        "-e",
        "udp.checksum.status",
        "-e",
        "icmp.checksum.status",
        "-e",
        "icmpv6.checksum.status",
        "-e",
        "_ws.expert",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert len(rows) == len(frames)
    # status 1 = good, 0 = bad, 2 = unverified; each frame is good on every checksum it carries
    for i, row in enumerate(rows):
        statuses = [v for v in row.split("\t")[:5] if v]
        assert statuses and all(v == "1" for v in statuses), (i, row)
        assert "Bad checksum" not in row and "bad" not in row.lower(), (i, row)
    bad = subprocess.run(
        args[:4]
        + [
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-Y",
            "ip.checksum.status == 0 or "
            "tcp.checksum.status == 0 or udp.checksum.status == 0 or icmp.checksum.status == 0 "
            "or icmpv6.checksum.status == 0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 0 and bad.stdout.strip() == ""
