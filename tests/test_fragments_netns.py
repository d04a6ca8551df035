"""Fragments against outside references, in a network namespace.

- **Linux reassembly.** Crafted IPv4 and IPv6 fragment sequences (in order, reversed, duplicates
  with the same or other bytes, overlaps, a duplicate spanning two of Linux's runs, empty,
  unaligned and inconsistent fragments) are sent as raw frames into a namespace whose UDP socket
  reports what the kernel delivered; :class:`Defragmenter` fed the same frames must deliver the same
  datagrams, byte for byte, and nothing else.
- **Real fragmented traffic.** ``ping -s 3000`` (IPv4 and IPv6) and 3,000-byte UDP datagrams cross
  a 1500-byte MTU veth and are captured with tcpdump. Every frame parses (first fragments with
  their ports, later ones without, as tshark dissects them with reassembly off); ``udp port 5300``
  and friends select the same frames as tcpdump; the Defragmenter rebuilds the datagrams tshark
  reassembles and the receiving socket got.

Topology: one veth end in the test's own namespace (frames are written to it with an AF_PACKET
socket, so no IP stack of ours touches them), the other in namespace ``rx`` (198.18.15.2/24,
2001:2:15::2/64). The real traffic test adds a sender namespace ``tx`` on a second veth.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import need_root, need_tool

from e2actors.packet.build import ether, ipv4, ipv6, udp
from e2actors.packet.defrag import Defragmenter
from e2actors.packet.filter import compile_filter
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import read_packets
from netns import Lab, sh

pytestmark = pytest.mark.netns

TX4, RX4 = "198.18.15.1", "198.18.15.2"
TX6, RX6 = "2001:2:15::1", "2001:2:15::2"
PORT = 5300

# Prints one JSON line per datagram received on PORT (IPv4 and IPv6), "READY" first; exits on END.
RECEIVER = r"""
import json, select, socket, sys
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(("0.0.0.0", %d))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); s6.bind(("::", %d))
print("READY", flush=True)
ends = 0
while ends < 2:
    for s in select.select([s4, s6], [], [], 30)[0]:
        data, addr = s.recvfrom(70000)
        if data == b"END":
            ends += 1
            continue
        print(json.dumps({"v": 6 if s is s6 else 4, "hex": data.hex()}), flush=True)
""" % (PORT, PORT)


def mac_of(ns: str | None, dev: str) -> bytes:
    pre = f"ip -n {ns} " if ns else "ip "
    return bytes.fromhex(json.loads(sh(pre + f"-j link show dev {dev}").stdout)[0]["address"].replace(":", ""))


def enable_ipv6(lab: Lab, ns: str, dev: str, cidr: str) -> None:
    sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=0")
    sh(f"ip -n {ns} addr add {cidr} dev {dev} nodad")


class Receiver:
    """The UDP receiver running in a namespace; ``collect()`` waits for both END markers."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.proc = lab.run(ns, [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "READY", line

    def collect(self, timeout: float = 30) -> list[tuple[int, bytes]]:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out
        return [(d["v"], bytes.fromhex(d["hex"])) for d in map(json.loads, out.splitlines())]


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_root()
    need_tool("ip")
    lab = Lab("f15")
    try:
        yield lab
    finally:
        lab.close()


# --- crafted fragments against the Linux stack ------------------------------------------------------
BODY = 56  # UDP payload bytes: with the header, a 64-byte fragmentable part in 8 units of 8 bytes


def datagram(case: int, v: int) -> bytes:
    """The UDP datagram (header + payload) of one case: its tag first, then filler."""
    src, dst = (TX4, RX4) if v == 4 else (TX6, RX6)
    payload = (f"case{case:02d}-v{v}:".encode() + bytes(range(65, 65 + BODY)))[:BODY]
    return udp(src, dst, 40000 + case, PORT, payload)


def swapped(b: bytes) -> bytes:
    """The same 16-bit words in another order: other bytes, the same one's-complement sum, so the
    UDP checksum still holds whichever copy the kernel keeps."""
    words = [b[i:i + 2] for i in range(0, len(b), 2)]
    return b"".join(words[1:] + words[:1])


def frame(v: int, ident: int, dst_mac: bytes, src_mac: bytes, offset: int, data: bytes, mf: bool) -> bytes:
    if v == 4:
        return ether(ipv4(TX4, RX4, 17, data, ident=ident, mf=mf, frag_offset=offset), src=src_mac, dst=dst_mac)
    fh = struct.pack("!HI", offset | int(mf), ident)
    return ether(ipv6(TX6, RX6, 17, data, ext=((44, fh),)), src=src_mac, dst=dst_mac)


# Each case: pieces (start, end, more-fragments, alternative bytes) of the 64-byte datagram, in
# the order they are sent. Expected outcomes are Linux's (the test checks them, not us).
CASES: dict[str, list[tuple[int, int, bool, bool]]] = {
    "in order": [(0, 16, True, False), (16, 32, True, False), (32, 48, True, False), (48, 64, False, False)],
    "reversed": [(48, 64, False, False), (32, 48, True, False), (16, 32, True, False), (0, 16, True, False)],
    "exact duplicate": [(0, 16, True, False), (16, 32, True, False), (16, 32, True, False), (32, 64, False, False)],
    "duplicate, other bytes, after": [(0, 32, True, False), (16, 32, True, True), (32, 64, False, False)],
    "duplicate, other bytes, first": [(16, 32, True, True), (0, 16, True, False), (16, 32, True, False),
                                      (32, 64, False, False)],
    "partial overlap": [(0, 24, True, False), (16, 40, True, False), (40, 64, False, False)],
    "overlap then whole again": [(0, 24, True, False), (16, 40, True, False), (0, 32, True, False),
                                 (32, 64, False, False)],
    "duplicate inside one run": [(0, 16, True, False), (16, 32, True, False), (32, 48, True, False),
                                 (8, 40, True, False), (48, 64, False, False)],
    "duplicate across two runs": [(48, 64, False, False), (32, 48, True, False), (16, 32, True, False),
                                  (16, 48, True, False), (0, 16, True, False)],
    "empty fragment": [(0, 16, True, False), (16, 16, True, False), (16, 64, False, False)],
    "two different ends": [(0, 16, True, False), (48, 64, False, False), (40, 56, False, False),
                           (16, 48, True, False)],
    "beyond the end": [(48, 64, False, False), (0, 16, True, False), (64, 72, True, False), (16, 48, True, False)],
    "unaligned, then aligned": [(0, 20, True, False), (16, 32, True, False), (32, 64, False, False),
                                (0, 16, True, False)],
    "last first, its tail again": [(32, 64, False, False), (48, 64, False, False), (0, 32, True, False)],
}


def crafted_frames(v: int, dst_mac: bytes, src_mac: bytes) -> tuple[list[bytes], dict[int, str]]:
    frames: list[bytes] = []
    names: dict[int, str] = {}
    for case, (name, pieces) in enumerate(CASES.items(), 1):
        names[case] = name
        whole = datagram(case, v)
        ident = 0x1000 + case
        for start, end, mf, alt in pieces:
            data = whole[start:end] if end <= len(whole) else whole[start:] + b"\0" * (end - len(whole))
            if alt:
                data = swapped(data)
            frames.append(frame(v, ident, dst_mac, src_mac, start, data, mf))
    return frames, names


def send_frames(dev: str, frames: list[bytes]) -> None:
    """Write frames on ``dev`` from one CPU, so the kernel takes them in this order (veth queues a
    frame to the backlog of the CPU that sent it)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((dev, 0))
            for f in frames:
                s.send(f)
    finally:
        os.sched_setaffinity(0, saved)


def test_crafted_fragments_reassemble_like_linux(lab: Lab) -> None:
    rx = lab.ns("rx")
    tx_dev, rx_dev = lab.veth("fq0", "fq1", None, rx)
    lab.addr(rx, rx_dev, f"{RX4}/24")
    enable_ipv6(lab, rx, rx_dev, f"{RX6}/64")
    dst, src = mac_of(rx, rx_dev), mac_of(None, tx_dev)
    recv = Receiver(lab, rx)
    frames4, names = crafted_frames(4, dst, src)
    frames6, _ = crafted_frames(6, dst, src)
    end4 = ether(ipv4(TX4, RX4, 17, udp(TX4, RX4, 1, PORT, b"END")), src=src, dst=dst)
    end6 = ether(ipv6(TX6, RX6, 17, udp(TX6, RX6, 1, PORT, b"END")), src=src, dst=dst)
    send_frames(tx_dev, frames4 + [end4] + frames6 + [end6])
    linux = {(v, int(d[4:6])): d for v, d in recv.collect()}

    ours: dict[tuple[int, int], bytes] = {}
    for v, frames in ((4, frames4), (6, frames6)):
        d = Defragmenter()
        used = 0
        for f in frames:
            out = d.feed(Packet(f))
            if out is not None:
                assert not out.malformed, out.reason
                ours[(v, int(out.payload[4:6]))] = out.payload
                used += len(d.last_fragments)
        # Every fragment is accounted for: in a datagram, dropped with a reason, or still held.
        dropped = d.take_dropped()
        held = d.flush()
        assert used + len(dropped) + len(d.take_dropped()) == len(frames), (used, len(dropped), held)

    def show(got: dict) -> dict:
        return {f"v{v} {names[c]}": p[7:15] for (v, c), p in sorted(got.items())}

    assert show(ours) == show(linux)
    assert ours == linux
    # The cases do what their names say (so the comparison above exercises each rule).
    delivered = {names[c] for v, c in linux if v == 4}
    assert delivered == {"in order", "reversed", "exact duplicate", "duplicate, other bytes, after",
                         "duplicate, other bytes, first", "overlap then whole again",
                         "duplicate inside one run", "unaligned, then aligned", "last first, its tail again"}, delivered
    assert {names[c] for v, c in linux if v == 6} == delivered
    # Duplicates keep the copy that came first, whatever their bytes.
    for (v, c), got in linux.items():
        whole = datagram(c, v)
        alt = whole[:16] + swapped(whole[16:32]) + whole[32:]
        if names[c] == "duplicate, other bytes, first":
            assert got == alt[8:] != whole[8:]
        elif names[c] == "duplicate, other bytes, after":
            assert got == whole[8:]


# --- real fragmented traffic --------------------------------------------------------------------------
SENDER = r"""
import socket, sys
big = bytes((i * 7) & 0xFF for i in range(3000))
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s4.sendto(b"small", (%r, %d)); s4.sendto(big, (%r, %d))
s6.sendto(b"small", (%r, %d)); s6.sendto(big, (%r, %d))
s4.sendto(b"END", (%r, %d)); s6.sendto(b"END", (%r, %d))
""" % (RX4, PORT, RX4, PORT, RX6, PORT, RX6, PORT, RX4, PORT, RX6, PORT)


def tshark_fields(tshark: str, path: str, fields: list[str], *opts: str) -> list[list[str]]:
    cmd = [tshark, "-r", path, "-T", "fields", "-E", "separator=|", *opts]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


@pytest.fixture
def real_capture(lab: Lab, tmp_path) -> str:
    """A capture (taken in ``rx``) of pings and UDP datagrams of 3,000 bytes over a 1500 MTU."""
    tcpdump = need_tool("tcpdump")
    need_tool("ping")
    tx, rx = lab.ns("tx"), lab.ns("rx")
    t0, r0 = lab.veth("ft0", "fr0", tx, rx)
    lab.addr(tx, t0, f"{TX4}/24")
    lab.addr(rx, r0, f"{RX4}/24")
    enable_ipv6(lab, tx, t0, f"{TX6}/64")
    enable_ipv6(lab, rx, r0, f"{RX6}/64")
    path = str(tmp_path / "frags.pcap")
    cap = lab.run(rx, [tcpdump, "-i", r0, "-U", "-n", "-w", path, "ip or ip6"], stderr=subprocess.PIPE, text=True)
    line = cap.stderr.readline()  # type: ignore[union-attr]
    assert "listening on" in line, line
    recv = Receiver(lab, rx)
    for cmd in (f"ping -c 1 -s 3000 {RX4}", f"ping -6 -c 1 -s 3000 {RX6}"):
        r = lab.exec(tx, cmd)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["ip", "netns", "exec", tx, sys.executable, "-c", SENDER], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = recv.collect()
    assert sorted(len(d) for _v, d in got) == [5, 5, 3000, 3000]
    # Wait until the capture holds the last datagram (the IPv6 END), then stop tcpdump.
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            pkts = list(read_packets(path))
        except Exception:  # noqa: BLE001 - a record being written
            pkts = []
        if any(p.payload == b"END" and p.ip_version == 6 for p in pkts):
            break
        time.sleep(0.05)
    os.kill(cap.pid, signal.SIGINT)
    cap.wait(10)
    return path


def test_real_fragments_parse_filter_and_reassemble_like_the_tools(real_capture: str) -> None:
    tshark, tcpdump = need_tool("tshark"), need_tool("tcpdump")
    path = real_capture
    pkts = list(read_packets(path))
    assert not [p for p in pkts if p.malformed], [p.reason for p in pkts if p.malformed]
    firsts = [p for p in pkts if p.is_fragment and p.frag_offset == 0]
    laters = [p for p in pkts if p.is_fragment and p.frag_offset > 0]
    # Each 3,000-byte datagram (2 pings, 2 UDP, and the 2 ping replies) is 3 fragments.
    assert len(firsts) == 6 and len(laters) == 12, (len(firsts), len(laters))
    assert {(p.ip_version, p.proto) for p in firsts} == {(4, 1), (6, 58), (4, 17), (6, 17)}
    assert all(p.sport == -1 and p.l4_offset == -1 for p in laters)

    # Ports, frame by frame, as tshark dissects them with reassembly off.
    rows = tshark_fields(tshark, path, ["frame.number", "udp.srcport", "udp.dstport"],
                         "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE")
    theirs = {int(n): (int(s) if s else -1, int(d) if d else -1) for n, s, d in rows}
    mine = {i: (p.sport, p.dport) if p.proto == 17 else (-1, -1) for i, p in enumerate(pkts, 1)}
    assert mine == theirs
    assert sum(1 for p in firsts if p.proto == 17 and p.dport == PORT) == 2

    # Filters: the frames tcpdump selects.
    for expr in (f"udp port {PORT}", f"udp dst port {PORT}", "udp", "icmp", "icmp6", "ip[6:2] & 0x1fff != 0",
                 f"ip6 and udp port {PORT}", "ip6 proto 44"):
        out = subprocess.run([tcpdump, "-r", path, "-n", "-tt", "--", expr], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        want = {line.split()[0] for line in out.stdout.splitlines()}
        f = compile_filter(expr)
        got = {f"{p.ts:.6f}" for p in pkts if f.match(p.data, p.wirelen)}
        assert got == want, expr
    # libpcap's port tests accept an IPv4 first fragment, not an IPv6 one (the UDP header is not
    # right after the fixed header): the IPv4 first fragment is the one that matters here.
    port_test = compile_filter(f"udp port {PORT}")
    assert [p.ip_version for p in firsts if port_test.match(p.data, p.wirelen)] == [4]

    # Reassembly: the datagrams tshark rebuilds (the socket got the same UDP payloads: see the fixture).
    # tshark shows a reassembled datagram in the frame of the fragment that completed it.
    number = {id(p): i for i, p in enumerate(pkts, 1)}
    d = Defragmenter()
    mine_whole: dict[int, tuple[int, bytes]] = {}
    whole = []
    for p in pkts:
        o = d.feed(p)
        if o is not None and o is not p:
            whole.append(o)
            mine_whole[number[id(d.last_fragments[-1])]] = (o.ip_version, o.payload if o.proto == 17 else b"")
            assert o.ts == p.ts and len(d.last_fragments) == 3
    assert len(whole) == 6 and len(d) == 0 and not d.take_dropped()
    rows = tshark_fields(tshark, path, ["frame.number", "ip.reassembled.length", "ipv6.reassembled.length",
                                        "udp.payload"], "-Y", "ip.reassembled.length || ipv6.reassembled.length")
    theirs_whole = {int(n): (4 if r4 else 6, bytes.fromhex(pl)) for n, r4, _r6, pl in rows}
    assert mine_whole == theirs_whole
    big = bytes((i * 7) & 0xFF for i in range(3000))
    assert sorted((o.ip_version, o.payload) for o in whole if o.proto == 17) == [(4, big), (6, big)]
    assert sorted(len(o.data) - o.l3_offset for o in whole) == sorted(
        int(r4 or r6) + (20 if r4 else 40) for _n, r4, r6, _pl in rows)
    assert all(o.sport == -1 if o.proto in (1, 58) else o.sport > 0 for o in whole)
