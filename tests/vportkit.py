"""Traces and NF configs for the virtual-port tests (tests/test_vport_netns.py).

Traces are built frame by frame (complete TCP connections with handshake, data and FIN, UDP
request/response pairs, ICMP echoes) from the benchmarking range 198.18.0.0/15, so each test knows
exactly which flow is which.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from e2actors.packet.build import echo_rest, ether, icmp, ipv4, ipv6, tcp, udp
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import PcapWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY = os.path.join(ROOT, "examples", "legacy")
CLIENT_MAC, SERVER_MAC = "02:01:c6:12:00:01", "02:00:5e:00:00:01"

#: A Linux bridge in the namespace: the plainest forwarder (bytes unchanged).
BRIDGE_SETUP = ["ip link add br0 type bridge mcast_snooping 0", "ip link set in0 master br0",
                "ip link set out0 master br0", "ip link set br0 up"]


def bridge(**extra) -> dict:
    return {"setup": list(BRIDGE_SETUP), "interfaces": {"in0": {"side": "client"}, "out0": {"side": "server"}},
            "ready": {"probe": True}, "mtu": 9000, **extra}


def suricata(**extra) -> dict:
    """Suricata inline (af-packet copy-mode ips between in0 and out0) with examples/legacy's drop rules."""
    return {"command": "suricata -c {dir}/suricata.yaml --af-packet -l {dir} -k none",
            "files": [os.path.join(LEGACY, "suricata.yaml"), os.path.join(LEGACY, "drop.rules")],
            "interfaces": {"in0": {"side": "client", "port": "safe"}, "out0": {"side": "server", "port": "safe"}},
            "unreturned": "unsafe", "ready": {"log": "Engine started", "timeout": 90}, "eve": "eve.json",
            "mtu": 9000, **extra}


def nftables(**extra) -> dict:
    """examples/legacy/firewall.nft on a bridge with br_netfilter (a stateful bump in the wire)."""
    return {"setup": BRIDGE_SETUP + ["sysctl -qw net.bridge.bridge-nf-call-iptables=1 "
                                     "net.bridge.bridge-nf-call-ip6tables=1", "nft -f {dir}/firewall.nft"],
            "files": [os.path.join(LEGACY, "firewall.nft")],
            "interfaces": {"in0": {"side": "client"}, "out0": {"side": "server"}},
            "ready": {"probe": True}, "mtu": 9000, **extra}


#: The built-in Firewall's config equivalent to examples/legacy/firewall.nft (ARP and other non-IP
#: frames are bridged unfiltered there: br_netfilter only hands IP to the inet hooks).
FIREWALL_RULES = {"rules": ["allow tcp dst port 80 or tcp dst port 443", "allow udp dst port 53",
                            "allow icmp[icmptype] == icmp-echo", "allow icmp6 and icmp6[icmp6type] == icmp6-echo",
                            "allow not ip and not ip6"], "default": "deny"}


@dataclass
class Trace:
    """Frames with times, and what each flow is."""

    frames: list[tuple[float, bytes]] = field(default_factory=list)
    t: float = 1_700_000_000.0
    #: flow key -> label
    flows: dict[tuple, str] = field(default_factory=dict)
    #: seconds between frames
    dt: float = 0.0005

    def add(self, frame: bytes, label: str) -> None:
        self.t += self.dt
        self.frames.append((self.t, frame))
        self.flows.setdefault(Packet(frame).flow_key, label)

    def packets(self, port: str = "in") -> list[Packet]:
        return [Packet(f, ts, port) for ts, f in sorted(self.frames, key=lambda x: x[0])]

    def write(self, path: str) -> str:
        with PcapWriter(path) as w:
            for ts, f in sorted(self.frames, key=lambda x: x[0]):
                w.write(f, ts)
        return path


def _l3(src: str, dst: str, proto: int, seg: bytes, from_client: bool) -> bytes:
    macs = (CLIENT_MAC, SERVER_MAC) if from_client else (SERVER_MAC, CLIENT_MAC)
    body = ipv6(src, dst, proto, seg) if ":" in src else ipv4(src, dst, proto, seg)
    return ether(body, src=macs[0], dst=macs[1])


def tcp_conn(tr: Trace, label: str, c: str, s: str, sport: int, dport: int, request: bytes = b"",
             response: bytes = b"", handshake: bool = True, close: str = "fin", split: int | None = None) -> None:
    """One TCP connection: handshake, the request (split in two segments at ``split``), the
    response, then FIN/ACKs (``close="fin"``), a server RST (``"rst"``) or nothing."""
    seq = {True: 1000 + sport, False: 5000 + dport}

    def send(from_client: bool, flags: str, payload: bytes = b"") -> None:
        a, b = (c, s) if from_client else (s, c)
        pa, pb = (sport, dport) if from_client else (dport, sport)
        ack = seq[not from_client] if "A" in flags else 0
        seg = tcp(a, b, pa, pb, seq=seq[from_client], ack=ack, flags=flags, payload=payload, window=64240)
        tr.add(_l3(a, b, 6, seg, from_client), label)
        seq[from_client] += len(payload) + ("S" in flags) + ("F" in flags)

    if handshake:
        send(True, "S")
        send(False, "SA")
        send(True, "A")
    if request:
        parts = [request[:split], request[split:]] if split else [request]
        for p in parts:
            send(True, "PA", p)
        send(False, "A")
    for i in range(0, len(response), 1400):
        send(False, "PA", response[i:i + 1400])
        send(True, "A")
    if close == "fin":
        send(True, "FA")
        send(False, "FA")
        send(True, "A")
    elif close == "rst":
        send(False, "RA")


def udp_pair(tr: Trace, label: str, c: str, s: str, sport: int, dport: int, reply: bool = True) -> None:
    tr.add(_l3(c, s, 17, udp(c, s, sport, dport, b"q" * 30), True), label)
    if reply:
        tr.add(_l3(s, c, 17, udp(s, c, dport, sport, b"r" * 60), False), label)


def ping(tr: Trace, label: str, c: str, s: str, ident: int, request: bool = True) -> None:
    if request:
        tr.add(_l3(c, s, 1, icmp(8, 0, echo_rest(ident, 1), b"p" * 48), True), label)
    tr.add(_l3(s, c, 1, icmp(0, 0, echo_rest(ident, 1), b"p" * 48), False), label)


def http_request(path: str, host: str = "example.com") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n".encode()


def http_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


def e2v_namespaces() -> list[str]:
    """The vport namespaces this process made that still exist."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = f"e2v-{os.getpid()}-"
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(mine))


def remove_namespaces(names: list[str]) -> None:
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
