"""AfPacketPort in a namespace pair: the PACKET_MMAP ring (and the recv fallback) receive every
frame the peer sends, skip the frames leaving the interface, and send through the transmit ring.

    [x] x0 ==veth== y0 [y]

The port runs in a helper process inside ``x`` (a socket belongs to the namespace it was made
in); frames come from a raw socket in ``y``, and what the port sends is captured in ``y``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import need_root, need_tool
from netns import Lab

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frame(i: int, size: int, vlan: int | None = None) -> bytes:
    head = bytes.fromhex("020000000002" "020000000001")
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    body = b"\x88\xb5" + i.to_bytes(4, "big")
    return (head + tag + body + bytes((i + k) & 0xFF for k in range(size))).ljust(60, b"\0")[: max(60, size)]


SEND = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); s.bind((sys.argv[1], 0))
for h in sys.stdin.read().split():
    s.send(bytes.fromhex(h))
"""

CAPTURE = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.bind((sys.argv[1], 3))
s.settimeout(0.2)
print("READY", flush=True)
end = time.time() + float(sys.argv[2])
got = []
while time.time() < end:
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        continue
    if a[2] != 4 and d[12:14] == b"\x88\xb5":
        got.append(d.hex())
print(" ".join(got), flush=True)
"""

PORT = r"""
import asyncio, json, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
import e2actors.switch.afpacket as afp
from e2actors.packet.packet import Packet
iface, mode, ignore, peer_ns, peer_if = sys.argv[2:7]
if ignore == "0":
    afp.PACKET_IGNORE_OUTGOING = 0xFFFF  # refused: only the per-frame packet type check is left
CAPTURE, SEND = sys.argv[7], sys.argv[8]
incoming, outgoing_other, outgoing_port = json.loads(sys.stdin.read())

async def main():
    got = []
    port = afp.AfPacketPort("p", iface, mode=mode, batch=8)
    async def gate(): pass
    await port.open(lambda name, pkts: got.extend(pkts), gate)
    cap = subprocess.Popen(["ip", "netns", "exec", peer_ns, sys.executable, "-c", CAPTURE, peer_if, "2"],
                           stdout=subprocess.PIPE, text=True)
    cap.stdout.readline()
    subprocess.run(["ip", "netns", "exec", peer_ns, sys.executable, "-c", SEND, peer_if],
                   input="\n".join(incoming), text=True, check=True)
    other = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); other.bind((iface, 0))
    for h in outgoing_other:
        other.send(bytes.fromhex(h))
    port.send([Packet(bytes.fromhex(h)) for h in outgoing_port])
    for _ in range(50):
        await asyncio.sleep(0.02)
    captured = cap.communicate()[0].split()
    st = port.stats()
    await port.close()
    print(json.dumps({"got": [p.data.hex() for p in got], "ports": [p.port for p in got],
                      "captured": captured, "stats": st}))

asyncio.run(main())
"""


@pytest.fixture
def pair() -> Iterator[tuple[Lab, str, str, str, str]]:
    need_root()
    need_tool("ip")
    lab = Lab("e2r")
    try:
        x, y = lab.ns("x"), lab.ns("y")
        x0, y0 = lab.veth("x0", "y0", x, y)
        yield lab, x, x0, y, y0
    finally:
        lab.close()


@pytest.mark.parametrize("mode,ignore", [("ring", "1"), ("ring", "0"), ("recv", "1"), ("recv", "0")])
def test_port_receives_peer_frames_skips_outgoing_and_sends(pair, mode: str, ignore: str) -> None:
    lab, x, x0, y, y0 = pair
    incoming = [frame(i, size) for i, size in enumerate([60, 100, 1000, 1514, 64] * 8)]
    incoming.append(frame(999, 200, vlan=7))
    other = [frame(10_000 + i, 300) for i in range(10)]  # leave x0 from another socket: outgoing
    mine = [frame(20_000 + i, size) for i, size in enumerate([60, 700, 1514] * 10)]
    r = subprocess.run(["ip", "netns", "exec", x, sys.executable, "-c", PORT, ROOT, x0, mode, ignore, y, y0,
                        CAPTURE, SEND],
                       input=json.dumps([[f.hex() for f in incoming], [f.hex() for f in other],
                                         [f.hex() for f in mine]]),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    st = res["stats"]
    assert st["mode"] == mode, st
    got = [bytes.fromhex(h) for h in res["got"] if bytes.fromhex(h)[12:14] in (b"\x88\xb5", b"\x81\x00")]
    assert set(res["ports"]) <= {"p"}
    # Every frame of the peer, in order; none of the frames that left x0 (ours or the other socket's).
    want = incoming if mode == "ring" else incoming[:-1] + [frame(999, 200)[:12] + frame(999, 200, vlan=7)[16:]]
    assert got == want
    assert st["rx_packets"] == len(res["got"])
    # What the port sent (after the other socket's frames) reached the peer, in order.
    captured = [bytes.fromhex(h) for h in res["captured"]]
    assert captured == other + mine
    assert st["tx_packets"] == len(mine) and not st["drops"]


@pytest.mark.parametrize("mode", ["ring", "recv"])
def test_a_frame_larger_than_the_mtu_is_dropped_counted_and_holds_nothing_back(pair, mode: str) -> None:
    lab, x, x0, y, y0 = pair
    mine = [frame(30_000 + i, size) for i, size in enumerate([100, 1514, 1800, 100, 9000, 700])]
    r = subprocess.run(["ip", "netns", "exec", x, sys.executable, "-c", PORT, ROOT, x0, mode, "1", y, y0,
                        CAPTURE, SEND],
                       input=json.dumps([[], [], [f.hex() for f in mine]]), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    captured = [bytes.fromhex(h) for h in res["captured"]]
    assert captured == [f for f in mine if len(f) <= 1514 + 4]  # every frame after the big ones went out
    assert res["stats"]["drops"] == {"larger than the interface's MTU": 2}
