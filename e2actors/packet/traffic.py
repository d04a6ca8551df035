"""A reproducible, realistic traffic generator: the demo's, the tests' and the benchmarks' input.

``generate(flows, seed, profile)`` returns the packets of ``flows`` interleaved flows, sorted by
time. Everything random comes from one ``random.Random(seed)``: the same arguments give the same
bytes, on every machine and Python run (no hash-ordered iteration, no wall clock).

What a trace holds (profile ``mixed``; others change the mix, see :data:`PROFILES`):

- complete TCP connections (SYN, SYN-ACK, ACK, data, FIN or RST) carrying real HTTP/1.1 requests
  with Host headers (youtube.com and www.youtube.com among them) and responses whose bodies follow
  a Pareto (heavy-tailed) size distribution, segmented at the MSS, ACKed, sometimes out of order or
  retransmitted;
- TLS connections opening with a ClientHello that carries a real SNI extension;
- DNS queries and responses over UDP, ICMP echo request/reply;
- IPv6 variants of all of it and 802.1Q-tagged flows (some QinQ);
- attacks: payloads matching IDS signatures ("/etc/passwd", "uid=0(root)", "cmd.exe"), some split
  across two TCP segments so that only stream reassembly sees them;
- a few malformed frames (each kind the parser must reject).

Addresses come from the benchmarking range 198.18.0.0/15 (clients 198.18/16, servers 198.19/16) and
the documentation prefix 2001:db8::/32.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import IO

from e2actors.packet.build import echo_rest, ether, icmp, icmp6, ipv4, ipv6, tcp, udp
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import PcapWriter

__all__ = ["PROFILES", "Profile", "frames", "generate", "iter_packets", "write_pcap"]

WEB_HOSTS = (
    "youtube.com",
    "www.youtube.com",
    "example.com",
    "www.example.org",
    "news.example.net",
    "cdn.example.com",
    "api.example.org",
    "m.youtube.com",
    "shop.example.net",
    "mail.example.com",
)
SIGNATURES = (b"/etc/passwd", b"uid=0(root)", b"cmd.exe")
ROUTER_MAC = b"\x02\x00\x5e\x00\x00\x01"
MSS = 1460
START = 1_700_000_000.0  # a fixed epoch: traces do not depend on the wall clock


@dataclass(frozen=True)
class Profile:
    """Relative weights of the flow kinds, and the share of IPv6 and VLAN-tagged flows."""

    http: float = 0.0
    tls: float = 0.0
    dns: float = 0.0
    icmp: float = 0.0
    attack: float = 0.0
    ipv6: float = 0.15
    vlan: float = 0.1
    malformed_per_flow: float = 0.02  # malformed frames per flow (at least one when > 0)
    flows_per_s: float = 400.0  # flow arrival rate (Poisson), sets how much flows overlap


PROFILES: dict[str, Profile] = {
    "mixed": Profile(http=0.35, tls=0.3, dns=0.2, icmp=0.05, attack=0.1),
    "web": Profile(http=0.5, tls=0.5, malformed_per_flow=0.0),
    "dns": Profile(dns=1.0, malformed_per_flow=0.0),
    "attack": Profile(http=0.3, attack=0.7),
    "ipv6": Profile(http=0.4, tls=0.3, dns=0.2, icmp=0.1, ipv6=1.0, vlan=0.0, malformed_per_flow=0.0),
}


class _Ctx:
    """Per-trace generator state: the RNG and the addresses in use."""

    def __init__(self, rng: random.Random, profile: Profile) -> None:
        self.rng = rng
        self.profile = profile
        self.used_ports: set[tuple[bytes, int]] = set()

    def endpoints(self, v6: bool) -> tuple[bytes, bytes]:
        r = self.rng
        if v6:
            c = b"\x20\x01\x0d\xb8\x00\x0c" + bytes(8) + struct.pack("!H", r.randrange(1, 4096))
            s = b"\x20\x01\x0d\xb8\x00\x05" + bytes(8) + struct.pack("!H", r.randrange(1, 64))
            return c, s
        return bytes((198, 18, r.randrange(0, 16), r.randrange(1, 255))), bytes((198, 19, 0, r.randrange(1, 64)))

    def client_port(self, client: bytes) -> int:
        while True:
            p = self.rng.randrange(32768, 61000)
            if (client, p) not in self.used_ports:
                self.used_ports.add((client, p))
                return p

    def sizes(self, xm: float, alpha: float = 1.2, cap: int = 256 * 1024) -> int:
        """A Pareto-distributed size: most flows small, a few very large (cut at ``cap``)."""
        return min(cap, int(xm * self.rng.paretovariate(alpha)))

    def rtt(self) -> float:
        return self.rng.uniform(0.002, 0.06)


class _L3:
    """Both ends of a flow: addresses, MACs, VLANs; wraps layer-4 bytes into frames."""

    def __init__(self, ctx: _Ctx) -> None:
        r = ctx.rng
        self.v6 = r.random() < ctx.profile.ipv6
        self.c, self.s = ctx.endpoints(self.v6)
        self.cmac = b"\x02\x01" + self.c[-4:]
        self.vlans: tuple[int, ...] = ()
        if r.random() < ctx.profile.vlan:
            self.vlans = (r.choice((10, 20, 30)),) if r.random() < 0.8 else (100, r.choice((10, 20)))
        self.ident = r.randrange(0, 65536)

    def frame(self, from_client: bool, proto: int, seg: bytes) -> bytes:
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        smac, dmac = (self.cmac, ROUTER_MAC) if from_client else (ROUTER_MAC, self.cmac)
        if self.v6:
            pkt = ipv6(src, dst, proto, seg)
        else:
            self.ident = (self.ident + 1) & 0xFFFF
            pkt = ipv4(src, dst, proto, seg, ident=self.ident, df=proto == 6)
        return ether(pkt, src=smac, dst=dmac, vlans=self.vlans, outer_tpid=0x88A8 if len(self.vlans) > 1 else None)


class _Tcp(_L3):
    """One TCP connection; ``send`` builds a segment and advances that side's sequence number."""

    def __init__(self, ctx: _Ctx, dport: int) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.sport = ctx.client_port(self.c)
        self.dport = dport
        self.seq = {True: ctx.rng.getrandbits(32), False: ctx.rng.getrandbits(32)}
        self.out: list[tuple[float, bytes]] = []

    def send(self, t: float, from_client: bool, flags: str, payload: bytes = b"", options: bytes = b"") -> None:
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        sp, dp = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        ack = self.seq[not from_client] if "A" in flags else 0
        seg = tcp(
            src,
            dst,
            sp,
            dp,
            seq=self.seq[from_client],
            ack=ack,
            flags=flags,
            payload=payload,
            options=options,
            window=64240,
        )
        self.out.append((t, self.frame(from_client, 6, seg)))
        self.seq[from_client] = (self.seq[from_client] + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF

    def handshake(self, t: float, rtt: float) -> float:
        mss = struct.pack("!BBH", 2, 4, MSS) + b"\x01\x03\x03\x07"  # MSS, NOP, window scale 7
        self.send(t, True, "S", options=mss)
        self.send(t + rtt / 2, False, "SA", options=mss)
        self.send(t + rtt, True, "A")
        return t + rtt

    def stream(self, t: float, from_client: bool, data: bytes, rtt: float, split_at: int | None = None) -> float:
        """Send ``data`` in MSS-sized segments (or split at ``split_at``), with ACKs, and sometimes
        one segment out of order or retransmitted."""
        r = self.ctx.rng
        if split_at is not None:
            chunks = [data[:split_at], data[split_at:]]
        else:
            chunks = [data[i : i + MSS] for i in range(0, len(data), MSS)] or [b""]
        first = len(self.out)
        gap = 0.00012  # back-to-back segments at ~100 Mbit/s
        for i, ch in enumerate(chunks):
            last = i == len(chunks) - 1
            t += gap
            self.send(t, from_client, "PA" if last else "A", ch)
            if i % 2 == 1 or last:  # delayed ACK every second segment
                self.send(t + rtt / 2, not from_client, "A")
        segs = [j for j in range(first, len(self.out)) if Packet(self.out[j][1]).payload_len > 0]
        if len(segs) >= 3 and r.random() < 0.15:  # reordering: two data segments swap arrival times
            j = r.randrange(0, len(segs) - 1)
            a, b = segs[j], segs[j + 1]
            (ta, fa), (tb, fb) = self.out[a], self.out[b]
            self.out[a], self.out[b] = (ta, fb), (tb, fa)
        if len(segs) >= 2 and r.random() < 0.15:  # loss and fast retransmission: a copy ~1.5 RTT later
            j = r.choice(segs)
            self.out.append((self.out[j][0] + 1.5 * rtt, self.out[j][1]))
        return t + rtt

    def close(self, t: float, rtt: float, rst: bool = False) -> None:
        if rst:
            self.send(t, True, "R")
            return
        self.send(t, False, "FA")
        self.send(t + rtt / 2, True, "FA")
        self.send(t + rtt, False, "A")


# --- application payloads ----------------------------------------------------------------------
_PATHS = ("/", "/index.html", "/watch?v=dQw4w9WgXcQ", "/api/v1/items", "/static/app.js", "/images/logo.png")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "curl/8.5.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
)


def _http_request(r: random.Random, host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {r.choice(_AGENTS)}\r\n"
        f"Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()


def _http_response(r: random.Random, body: bytes, ctype: str = "text/html") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _body(r: random.Random, n: int) -> bytes:
    # Text-like filler: compressible, and never contains an IDS signature by accident.
    words = (b"lorem ", b"ipsum ", b"dolor ", b"video ", b"stream ", b"data ", b"<div> ", b"</p>\n")
    out = bytearray()
    while len(out) < n:
        out += r.choice(words)
    return bytes(out[:n])


def _tls_client_hello(r: random.Random, sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    groups = struct.pack("!HHHHH", 10, 6, 4, 0x001D, 0x0017)
    versions = struct.pack("!HHBHH", 43, 5, 4, 0x0304, 0x0303)
    sigalgs = struct.pack("!HHHHHH", 13, 8, 6, 0x0403, 0x0804, 0x0401)
    alpn_list = b"\x02h2\x08http/1.1"
    alpn = struct.pack("!HHH", 16, len(alpn_list) + 2, len(alpn_list)) + alpn_list
    exts = sni_ext + groups + versions + sigalgs + alpn
    ciphers = struct.pack("!7H", 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030)
    sid = r.randbytes(32)
    body = (
        struct.pack("!H", 0x0303)
        + r.randbytes(32)
        + bytes([len(sid)])
        + sid
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _tls_server_flight(r: random.Random, nbytes: int) -> bytes:
    exts = struct.pack("!HHH", 43, 2, 0x0304)
    body = struct.pack("!H", 0x0303) + r.randbytes(32) + b"\x20" + r.randbytes(32) + struct.pack("!HB", 0x1301, 0)
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    out = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs + b"\x14\x03\x03\x00\x01\x01"
    while nbytes > 0:  # encrypted records: opaque bytes in application-data framing
        n = min(nbytes, 16384)
        out += b"\x17\x03\x03" + struct.pack("!H", n) + r.randbytes(n)
        nbytes -= n
    return out


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def _dns(r: random.Random, name: str, qtype: int, answer: bytes | None, qid: int) -> bytes:
    q = _dns_name(name) + struct.pack("!HH", qtype, 1)
    if answer is None:
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q
    rr = struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(answer)) + answer
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + rr


# --- flows ---------------------------------------------------------------------------------------
def _flow_http(ctx: _Ctx, t: float) -> list[tuple[float, bytes]]:
    r = ctx.rng
    c = _Tcp(ctx, 80)
    rtt = ctx.rtt()
    t = c.handshake(t, rtt)
    host = r.choice(WEB_HOSTS)
    t = c.stream(t, True, _http_request(r, host, r.choice(_PATHS)), rtt)
    t = c.stream(t, False, _http_response(r, _body(r, ctx.sizes(300))), rtt)
    c.close(t, rtt, rst=r.random() < 0.1)
    return c.out


def _flow_tls(ctx: _Ctx, t: float) -> list[tuple[float, bytes]]:
    r = ctx.rng
    c = _Tcp(ctx, 443)
    rtt = ctx.rtt()
    t = c.handshake(t, rtt)
    t = c.stream(t, True, _tls_client_hello(r, r.choice(WEB_HOSTS)), rtt)
    t = c.stream(t, False, _tls_server_flight(r, ctx.sizes(500)), rtt)
    c.close(t, rtt, rst=r.random() < 0.1)
    return c.out


def _flow_attack(ctx: _Ctx, t: float) -> list[tuple[float, bytes]]:
    """HTTP with a payload an IDS flags; half of them split the signature across two segments."""
    r = ctx.rng
    c = _Tcp(ctx, 80)
    rtt = ctx.rtt()
    t = c.handshake(t, rtt)
    kind = r.randrange(3)
    host = r.choice(WEB_HOSTS)
    split = r.random() < 0.5
    if kind == 0:  # path traversal in the request
        req = _http_request(r, host, "/cgi-bin/view.cgi?file=../../../../etc/passwd")
        sig = b"/etc/passwd"
        resp = _http_response(r, b"root:x:0:0:root:/root:/bin/bash\n" + _body(r, 200))
        at = req.index(sig) + 4 if split else None
        t = c.stream(t, True, req, rtt, split_at=at)
        t = c.stream(t, False, resp, rtt)
    elif kind == 1:  # a command shell answering
        req = _http_request(r, host, "/shell.php?cmd=id")
        resp = _http_response(r, _body(r, 50) + b"uid=0(root) gid=0(root) groups=0(root)\n", "text/plain")
        t = c.stream(t, True, req, rtt)
        at = resp.index(b"uid=0(root)") + 5 if split else None
        t = c.stream(t, False, resp, rtt, split_at=at)
    else:  # a Windows shell in a request
        req = _http_request(r, host, "/scripts/..%255c../winnt/system32/cmd.exe?/c+dir")
        at = req.index(b"cmd.exe") + 3 if split else None
        t = c.stream(t, True, req, rtt, split_at=at)
        t = c.stream(t, False, _http_response(r, _body(r, 100)), rtt)
    c.close(t, rtt, rst=r.random() < 0.3)
    return c.out


def _flow_dns(ctx: _Ctx, t: float) -> list[tuple[float, bytes]]:
    r = ctx.rng
    f = _L3(ctx)
    sport = ctx.client_port(f.c)
    name = r.choice(WEB_HOSTS)
    qtype = 28 if f.v6 or r.random() < 0.3 else 1
    answer = (
        (b"\x20\x01\x0d\xb8\x00\x05" + bytes(9) + bytes([r.randrange(1, 64)]))
        if qtype == 28
        else bytes((198, 19, 0, r.randrange(1, 64)))
    )
    qid = r.randrange(65536)
    src, dst = f.c, f.s
    out = [(t, f.frame(True, 17, udp(src, dst, sport, 53, _dns(r, name, qtype, None, qid))))]
    out.append((t + ctx.rtt(), f.frame(False, 17, udp(dst, src, 53, sport, _dns(r, name, qtype, answer, qid)))))
    return out


def _flow_icmp(ctx: _Ctx, t: float) -> list[tuple[float, bytes]]:
    r = ctx.rng
    f = _L3(ctx)
    ident = r.randrange(65536)
    out = []
    for seq in range(1, r.randrange(2, 6)):
        data = bytes(range(16, 16 + 48))
        rtt = ctx.rtt()
        if f.v6:
            req = icmp6(f.c, f.s, 128, 0, echo_rest(ident, seq), data)
            rep = icmp6(f.s, f.c, 129, 0, echo_rest(ident, seq), data)
            out += [(t, f.frame(True, 58, req)), (t + rtt, f.frame(False, 58, rep))]
        else:
            out += [
                (t, f.frame(True, 1, icmp(8, 0, echo_rest(ident, seq), data))),
                (t + rtt, f.frame(False, 1, icmp(0, 0, echo_rest(ident, seq), data))),
            ]
        t += 1.0
    return out


def _malformed(ctx: _Ctx, t: float) -> tuple[float, bytes]:
    """One frame of a kind the parser must reject (each kind in turn, chosen at random)."""
    r = ctx.rng
    c, s = ctx.endpoints(False)
    good = ether(ipv4(c, s, 6, tcp(c, s, 1234, 80, flags="PA", payload=b"x" * 10)))
    kind = r.randrange(5)
    if kind == 0:  # cut inside the IP header
        return t, good[: 14 + 12]
    if kind == 1:  # IHL below 5
        return t, good[:14] + b"\x43" + good[15:]
    if kind == 2:  # total length beyond the frame
        return t, good[:16] + b"\x05\xdc" + good[18:]
    if kind == 3:  # TCP data offset past the end
        return t, good[:46] + b"\xf0" + good[47:]
    c6, s6 = ctx.endpoints(True)  # an IPv6 hop-by-hop header claiming more than the packet holds
    return t, ether(ipv6(c6, s6, 0, b"\x06\x05" + bytes(6)))


_KINDS = (("http", _flow_http), ("tls", _flow_tls), ("dns", _flow_dns), ("icmp", _flow_icmp), ("attack", _flow_attack))


def frames(flows: int = 100, seed: int = 0, profile: str = "mixed") -> list[tuple[float, bytes]]:
    """The trace as ``(ts, frame)`` pairs sorted by time (ties keep generation order)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown traffic profile {profile!r}; choose from {', '.join(PROFILES)}")
    if flows < 0:
        raise ValueError("flows must be >= 0")
    prof = PROFILES[profile]
    rng = random.Random(seed)
    ctx = _Ctx(rng, prof)
    names = [k for k, _ in _KINDS]
    weights = [getattr(prof, k) for k in names]
    funcs = dict(_KINDS)
    events: list[tuple[float, int, bytes]] = []
    t = START
    n = 0
    for _ in range(flows):
        t += rng.expovariate(prof.flows_per_s)
        kind = rng.choices(names, weights)[0]
        for ts, fr in funcs[kind](ctx, t):
            events.append((round(ts, 6), n, fr))
            n += 1
    if prof.malformed_per_flow > 0 and flows:
        for _ in range(max(1, round(flows * prof.malformed_per_flow))):
            ts, fr = _malformed(ctx, START + rng.uniform(0, t - START + 0.001))
            events.append((round(ts, 6), n, fr))
            n += 1
    events.sort()
    return [(ts, fr) for ts, _n, fr in events]


def generate(flows: int = 100, seed: int = 0, profile: str = "mixed", port: str = "gen") -> list[Packet]:
    """The trace as parsed :class:`Packet` objects sorted by time (see the module docstring)."""
    return [Packet(fr, ts, port) for ts, fr in frames(flows, seed, profile)]


def iter_packets(flows: int = 100, seed: int = 0, profile: str = "mixed", port: str = "gen") -> Iterator[Packet]:
    """Like :func:`generate`, one packet at a time."""
    for ts, fr in frames(flows, seed, profile):
        yield Packet(fr, ts, port)


def write_pcap(dst: str | PathLike | IO[bytes], flows: int = 100, seed: int = 0, profile: str = "mixed") -> int:
    """Write the trace to a pcap file; returns the number of frames."""
    with PcapWriter(dst) as w:
        for ts, fr in frames(flows, seed, profile):
            w.write(fr, ts)
        return w.count
