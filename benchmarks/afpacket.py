"""AF_PACKET forwarding: the PACKET_MMAP ring against recvfrom/send, as root, in namespaces.

Topology (all in namespaces made here and deleted afterwards)::

    [gen] g0 ==veth== a0 [fwd] b0 ==veth== s0 [sink]

A generator in ``gen`` blasts frames of the same generated trace as benchmarks/switch.py from a
transmit ring (fast enough to saturate any forwarder here). In ``fwd`` one forwarder at a time
bridges a0 -> b0 for ``--seconds``; what it forwarded is b0's tx_packets. Forwarders:

* ``naive``: the minimal recvfrom/send loop of benchmarks/switch.py (f);
* ``port-recv`` / ``port-ring``: two AfPacketPorts wired directly (the port's own cost);
* ``switch-recv`` / ``switch-ring``: the Switch with two afpacket ports, as benchmarks/switch.py (e).

Each is run ``--rounds`` times, interleaved; the best round counts. Besides the forwarded rate
(which depends on what else the machine runs: generator and forwarder share the CPUs) it reports
the forwarder's packets per CPU second (forwarded / its user+system time), the steadier figure
on a busy machine. Last line: JSON.

    python benchmarks/afpacket.py [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

GEN = r"""
import mmap, socket, struct, sys, time
frames = [bytes.fromhex(l) for l in sys.stdin.read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(263, 10, 1)  # TPACKET_V2
fs, n = 2048, 4096
s.setsockopt(263, 13, struct.pack("=IIII", 1 << 16, n * fs >> 16, fs, n))  # PACKET_TX_RING
s.bind((sys.argv[1], 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
mm = mmap.mmap(s.fileno(), n * fs)
end = time.time() + float(sys.argv[2])
i = sent = k = 0
while time.time() < end:
    for _ in range(256):
        off = i * fs
        if mm[off] != 0:
            break
        f = frames[k]
        k = (k + 1) % len(frames)
        mm[off + 32:off + 32 + len(f)] = f
        struct.pack_into("=II", mm, off + 4, len(f), len(f))
        mm[off:off + 4] = b"\1\0\0\0"
        i = (i + 1) % n
        sent += 1
    try:
        s.send(b"")
    except OSError:
        pass
print(sent)
"""

NAIVE = r"""
import socket, sys, time
ETH_P_ALL = 3
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)); a.bind((sys.argv[1], 0))
b = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); b.bind((sys.argv[2], 0))
a.settimeout(0.5)
end = time.time() + float(sys.argv[3])
n = 0
while time.time() < end:
    try:
        data, addr = a.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == 4:
        continue
    b.send(data)
    n += 1
print(n)
"""

PORTS = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[5])
from e2actors.switch.afpacket import AfPacketPort
async def main():
    a = AfPacketPort("a", sys.argv[1], mode=sys.argv[4]); b = AfPacketPort("b", sys.argv[2], mode=sys.argv[4])
    async def gate(): pass
    await b.open(lambda n, p: None, gate)
    await a.open(lambda n, p: b.send(p), gate)
    print("READY", flush=True)
    await asyncio.sleep(float(sys.argv[3]))
    print(a.stats(), b.stats(), file=sys.stderr)
asyncio.run(main())
"""

SWITCH = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[5])
from e2actors import Node, run
from e2actors.switch.messages import GetSwitchStats, SetTable
from e2actors.switch.switch import Switch
from e2actors.switch.table import PortSpec, Route, SwitchTable
async def main():
    async with Node("afp") as node:
        sw = node.spawn(Switch, "switch", server="s1")
        m = sys.argv[4]
        await node.ask(sw, SetTable(SwitchTable(1, "s1", (
            PortSpec("a", "afpacket", {"iface": sys.argv[1], "mode": m}),
            PortSpec("b", "afpacket", {"iface": sys.argv[2], "mode": m})), (),
            (Route("port:a", "", "port:b", "a->b"),))))
        print("READY", flush=True)
        await asyncio.sleep(float(sys.argv[3]))
        st = await node.ask(sw, GetSwitchStats())
        print(st["ports"], st["drops"], file=sys.stderr)
run(main())
"""


FEED = r"""
import socket, sys
frames = [bytes.fromhex(l) for l in open(sys.argv[2]).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((sys.argv[1], 0))
k = 0
for line in sys.stdin:
    for _ in range(int(line)):
        s.send(frames[k]); k = (k + 1) % len(frames)
    print("done", flush=True)
"""

DRAIN = r"""
import asyncio, json, os, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[6])
from e2actors.switch.afpacket import AfPacketPort
a0, b0, feed_cmd, burst, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
feed = subprocess.Popen(json.loads(os.environ["E2_FEED"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

def fill():
    feed.stdin.write(f"{burst}\n"); feed.stdin.flush(); feed.stdout.readline(); time.sleep(0.002)

def naive():
    a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.bind((a0, 0))
    a.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: hold a whole burst
    b = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); b.bind((b0, 0))
    a.setblocking(False)
    n = 0; t = 0.0
    for _ in range(rounds):
        fill()
        t0 = time.thread_time()
        while True:
            try:
                data, addr = a.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == 4:
                continue
            b.send(data); n += 1
        t += time.thread_time() - t0
    a.close(); b.close()
    return n, t

async def port(mode):
    a = AfPacketPort("a", a0, mode=mode, batch=256); b = AfPacketPort("b", b0, mode=mode)
    n = 0
    def ingress(name, pkts):
        nonlocal n
        n += len(pkts); b.send(pkts)
    async def gate(): pass
    await b.open(lambda *x: None, gate); await a.open(ingress, gate)
    loop = asyncio.get_running_loop()
    loop.remove_reader(a.sock.fileno())  # driven by hand below
    if mode == "recv":
        a.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
    drain = a._readable_ring if a.mode == "ring" else a._readable
    t = 0.0
    for _ in range(rounds):
        fill()
        t0 = time.thread_time()
        while True:
            before = n
            drain()
            if n == before:
                break
        t += time.thread_time() - t0
    loop.add_reader(a.sock.fileno(), drain)
    await a.close(); await b.close()
    return n, t

async def switch(mode):
    from e2actors import Node
    from e2actors.switch.messages import SetTable
    from e2actors.switch.switch import Switch
    from e2actors.switch.table import PortSpec, Route, SwitchTable
    async with Node("drain") as node:
        sw = node.spawn(Switch, "switch", server="s1")
        await node.ask(sw, SetTable(SwitchTable(1, "s1", (
            PortSpec("a", "afpacket", {"iface": a0, "mode": mode}),
            PortSpec("b", "afpacket", {"iface": b0, "mode": mode})), (), (Route("port:a", "", "port:b", "a->b"),))))
        ports = node.cell(sw).actor.ports
        a, b = ports["a"], ports["b"]
        loop = asyncio.get_running_loop()
        if mode == "recv":
            a.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
        drain = a._readable_ring if a.mode == "ring" else a._readable
        t = 0.0
        for _ in range(rounds):
            loop.remove_reader(a.sock.fileno())
            fill()
            want = b.tx_packets + burst
            t0 = time.thread_time()
            loop.add_reader(a.sock.fileno(), drain)
            while b.tx_packets < want:
                await asyncio.sleep(0)
                if time.thread_time() - t0 > 5:
                    break
            t += time.thread_time() - t0
        return b.tx_packets, t

out = {}
for kind in sys.argv[7].split(","):
    if kind == "naive":
        n, t = naive()
    elif kind.startswith("port"):
        n, t = asyncio.run(port(kind.split("-")[1]))
    else:
        n, t = asyncio.run(switch(kind.split("-")[1]))
    out[kind] = n / t
    print(f"{kind:10s} {n:7d} packets in {t:6.3f} s CPU: {n / t:>10,.0f} pps", file=sys.stderr, flush=True)
feed.stdin.close(); feed.wait()
print(out)
"""


def sh(cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, shell=True, check=check, capture_output=True)


def counter(ns: str, dev: str, what: str) -> int:
    """Interface ``dev``'s statistic ``what`` (``tx_packets``...) in namespace ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/{what}"],
                         capture_output=True, text=True).stdout
    return int(out)


def measure(fw: subprocess.Popen, out: tuple[str, str], gen: tuple[str, str], hexes: str, seconds: float,
            verbose: bool = False) -> tuple[float, float, float]:
    """Drive the started forwarder ``fw`` for ``seconds`` with GEN sending ``hexes`` from
    interface ``gen`` (namespace, device); count what it sent out of ``out`` (namespace, device).
    Returns (forwarded pps, offered pps, the forwarder's CPU seconds) once it has exited."""
    before = counter(*out, "tx_packets")
    g = subprocess.Popen(["ip", "netns", "exec", gen[0], sys.executable, "-c", GEN, gen[1], str(seconds)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    offered = int(g.communicate(hexes)[0] or 0)
    time.sleep(0.2)  # (the last frames in flight reach the counter)
    done = counter(*out, "tx_packets") - before
    fw.stdout.read()  # type: ignore[union-attr]
    err = fw.stderr.read()  # type: ignore[union-attr]
    if verbose:
        print(err.strip(), file=sys.stderr)
    _pid, _status, ru = os.wait4(fw.pid, 0)
    fw.returncode = 0
    return done / seconds, offered / seconds, ru.ru_utime + ru.ru_stime


def trace_hex() -> str:
    from e2actors.packet.packet import Packet
    from e2actors.packet.traffic import frames

    trace = [d for _ts, d in frames(2000, seed=5)]
    return "\n".join(d.hex() for d in trace if Packet(d).reason is None and 60 <= len(d) <= 1514)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="naive,port-recv,port-ring,switch-recv,switch-ring")
    ap.add_argument("--drain", action="store_true",
                    help="instead: fill a0 with a burst, then time (CPU) draining it to b0; no contention "
                         "with the generator")
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--verbose", action="store_true", help="show each forwarder's port counters")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root"}))
        return
    tag = f"ab{os.getpid() % 10000}"
    gen, fwd, sink = f"{tag}gen", f"{tag}fwd", f"{tag}sink"
    g0, a0, b0, s0 = f"{tag}g0", f"{tag}a0", f"{tag}b0", f"{tag}s0"
    hexes = trace_hex()
    try:
        for ns in (gen, fwd, sink):
            sh(f"ip netns add {ns}")
            sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {gen} link add {g0} type veth peer name {a0} netns {fwd}")
        sh(f"ip -n {fwd} link add {b0} type veth peer name {s0} netns {sink}")
        for ns, dev in ((gen, g0), (fwd, a0), (fwd, b0), (sink, s0)):
            sh(f"ip -n {ns} link set {dev} up")
            sh(f"ip netns exec {ns} ethtool -K {dev} tx off rx off tso off gso off gro off", check=False)
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1", check=False)

        def one(kind: str) -> tuple[float, float, float]:
            mode = kind.split("-")[-1]
            if kind == "naive":
                cmd = [sys.executable, "-c", NAIVE, a0, b0, str(args.seconds + 1.5)]
            else:
                cmd = [sys.executable, "-c", PORTS if kind.startswith("port") else SWITCH, a0, b0,
                       str(args.seconds + 1.5), mode, ROOT]
            fw = subprocess.Popen(["ip", "netns", "exec", fwd, *cmd], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
            if kind != "naive":
                fw.stdout.readline()  # type: ignore[union-attr]
            else:
                time.sleep(0.5)
            return measure(fw, (fwd, b0), (gen, g0), hexes, args.seconds, args.verbose)

        if args.drain:
            import ast
            import tempfile

            with tempfile.NamedTemporaryFile("w", suffix=".hex", delete=False) as f:
                f.write(hexes)
            feed = json.dumps(["ip", "netns", "exec", gen, sys.executable, "-c", FEED, g0, f.name])
            res: dict[str, float] = {}
            try:
                for _ in range(args.rounds):
                    r = subprocess.run(["ip", "netns", "exec", fwd, sys.executable, "-c", DRAIN, a0, b0,
                                        "FEED", str(args.burst), "20", ROOT, args.only],
                                       capture_output=True, text=True, input="",
                                       env=dict(os.environ, E2_FEED=feed))
                    sys.stderr.write(r.stderr)
                    for k, v in ast.literal_eval(r.stdout.strip().splitlines()[-1]).items():
                        res[k] = max(res.get(k, 0.0), v)
            finally:
                os.unlink(f.name)
            out = {f"drain_{k.replace('-', '_')}_pps": round(v) for k, v in res.items()}
            for k in res:
                if k != "naive" and "naive" in res:
                    out[f"drain_{k.replace('-', '_')}_vs_naive"] = round(res[k] / res["naive"], 2)
            print(json.dumps(out))
            return
        kinds = args.only.split(",")
        best: dict[str, float] = {k: 0.0 for k in kinds}
        per_cpu: dict[str, float] = {k: 0.0 for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                pps, off, cpu = one(k)
                cap = pps * args.seconds / cpu if cpu else 0.0
                print(f"{k:12s} {pps:>10,.0f} pps forwarded (offered {off:>10,.0f} pps); "
                      f"{cpu:5.2f} s CPU: {cap:>10,.0f} packets per CPU second", flush=True)
                best[k] = max(best[k], pps)
                per_cpu[k] = max(per_cpu[k], cap)
        out: dict[str, float] = {}
        for k in kinds:
            key = k.replace("-", "_")
            out[f"{key}_pps"] = round(best[k])
            out[f"{key}_per_cpu_s"] = round(per_cpu[k])
        if best.get("naive"):
            for k in kinds:
                if k != "naive":
                    key = k.replace("-", "_")
                    out[f"{key}_vs_naive"] = round(best[k] / best["naive"], 2)
                    out[f"{key}_per_cpu_vs_naive"] = round(per_cpu[k] / per_cpu["naive"], 2)
        print(json.dumps(out))
    finally:
        for ns in (gen, fwd, sink):
            sh(f"ip netns del {ns}", check=False)


if __name__ == "__main__":
    main()
