"""Helpers for NF tests: build small, real TCP/UDP conversations as parsed packets."""

from __future__ import annotations

from e2actors.packet import build
from e2actors.packet.packet import Packet

C, S = "198.18.0.10", "198.19.0.80"


def tcp_pkt(src: str, dst: str, sport: int, dport: int, flags: str = "A", payload: bytes = b"", seq: int = 0,
            ack: int = 0, ts: float = 0.0, port: str = "in") -> Packet:
    seg = build.tcp(src, dst, sport, dport, flags=flags, payload=payload, seq=seq, ack=ack)
    return Packet(build.ether(build.ip(src, dst, 6, seg)), ts, port)


def udp_pkt(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", ts: float = 0.0) -> Packet:
    return Packet(build.ether(build.ip(src, dst, 17, build.udp(src, dst, sport, dport, payload))), ts, "in")


def connection(c: str = C, s: str = S, cport: int = 40000, sport: int = 80, request: bytes = b"GET / HTTP/1.1\r\n\r\n",
               response: bytes = b"HTTP/1.1 200 OK\r\n\r\nhello", t0: float = 1.0) -> list[Packet]:
    """A complete TCP connection: handshake, one request, one response, FIN both ways."""
    ci, si = 1000, 5000
    t = [t0 + i * 0.001 for i in range(10)]
    return [
        tcp_pkt(c, s, cport, sport, "S", seq=ci, ts=t[0]),
        tcp_pkt(s, c, sport, cport, "SA", seq=si, ack=ci + 1, ts=t[1]),
        tcp_pkt(c, s, cport, sport, "A", seq=ci + 1, ack=si + 1, ts=t[2]),
        tcp_pkt(c, s, cport, sport, "PA", request, seq=ci + 1, ack=si + 1, ts=t[3]),
        tcp_pkt(s, c, sport, cport, "PA", response, seq=si + 1, ack=ci + 1 + len(request), ts=t[4]),
        tcp_pkt(c, s, cport, sport, "FA", seq=ci + 1 + len(request), ack=si + 1 + len(response), ts=t[5]),
        tcp_pkt(s, c, sport, cport, "FA", seq=si + 1 + len(response), ack=ci + 2 + len(request), ts=t[6]),
        tcp_pkt(c, s, cport, sport, "A", seq=ci + 2 + len(request), ack=si + 2 + len(response), ts=t[7]),
    ]


def chain_policy(nf: str, spec: str, load_pps: int = 1000, filter: str = "", name: str | None = None) -> str:
    """A policy YAML of one NF between ``in`` and ``out``: ``spec`` is the NF's flow mapping body
    (``class: ..., affinity: ...``)."""
    head = f"name: {name}\n" if name else ""
    return f"""{head}nfs:
  {nf}: {{{spec}}}
classes:
  - {{name: all, filter: "{filter}", load_pps: {load_pps}}}
edges:
  - {{from: in, to: {nf}}}
  - {{from: {nf}, to: out}}
"""
