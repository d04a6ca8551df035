"""Build frames with correct checksums: Ethernet (VLAN tags), ARP, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6.

Used by the tests and the traffic generator. Layers are plain functions that return ``bytes`` and
nest, innermost first::

    seg = tcp(src, dst, 40000, 80, seq=1, flags="PA", payload=b"GET / ...")
    frame = ether(ipv4(src, dst, PROTO_TCP, seg), vlans=(10,))

Addresses may be text ('198.18.0.1', '2001:db8::1', 'aa:bb:cc:00:00:01') or packed bytes. The layer-4
builders need the IP addresses because TCP, UDP and ICMPv6 checksums cover a pseudo-header.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from e2actors.packet.checksum import internet_checksum, l4_checksum
from e2actors.packet.packet import ETH_ARP, ETH_IPV4, ETH_IPV6, parse_addr

__all__ = [
    "arp",
    "ether",
    "fragment",
    "icmp",
    "icmp6",
    "ip",
    "ipv4",
    "ipv6",
    "tcp",
    "tcp_flags",
    "udp",
]

DEFAULT_SRC_MAC = b"\x02\x00\x00\x00\x00\x01"  # locally administered
DEFAULT_DST_MAC = b"\x02\x00\x00\x00\x00\x02"


@lru_cache(maxsize=4096)
def _addr(a: str | bytes) -> bytes:
    return parse_addr(a)


def tcp_flags(flags: str | int) -> int:
    """Flag byte from letters ('S', 'SA', 'PA', 'FA', 'R', 'U', 'E', 'C') or an int."""
    if isinstance(flags, int):
        return flags
    bits = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32, "E": 64, "C": 128}
    v = 0
    for ch in flags.upper():
        if ch not in bits:
            raise ValueError(f"unknown TCP flag {ch!r} in {flags!r}")
        v |= bits[ch]
    return v


def ether(
    payload: bytes,
    ethertype: int | None = None,
    src: str | bytes = DEFAULT_SRC_MAC,
    dst: str | bytes = DEFAULT_DST_MAC,
    vlans: tuple[int, ...] = (),
    tpid: int = 0x8100,
    outer_tpid: int | None = None,
) -> bytes:
    """An Ethernet II frame; ``ethertype`` defaults from the payload's IP version nibble.

    ``vlans`` are 802.1Q ids, outermost first; the outermost tag uses ``outer_tpid`` when given
    (0x88a8 for 802.1ad QinQ), the others ``tpid``. No padding to 60 bytes is added.
    """
    if ethertype is None:
        v = payload[0] >> 4 if payload else 0
        ethertype = ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0
    out = _addr(dst) + _addr(src)
    for i, vid in enumerate(vlans):
        t = outer_tpid if (i == 0 and outer_tpid is not None and len(vlans) > 1) else tpid
        out += struct.pack("!HH", t, vid & 0x0FFF)
    return out + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str | bytes,
    dst: str | bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    df: bool = False,
    mf: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
    total_length: int | None = None,
) -> bytes:
    """An IPv4 datagram with a correct header checksum.

    ``frag_offset`` is in bytes (a multiple of 8); ``options`` are padded to 4 bytes;
    ``total_length`` overrides the length field (to build inconsistent frames for tests).
    """
    if frag_offset % 8:
        raise ValueError("fragment offset must be a multiple of 8 bytes")
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    ihl = 5 + len(options) // 4
    tot = 4 * ihl + len(payload) if total_length is None else total_length
    fw = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset >> 3)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, tot, ident & 0xFFFF, fw, ttl, proto, 0, _addr(src), _addr(dst))
    hdr += options
    c = internet_checksum(hdr)
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + payload


def ipv6(
    src: str | bytes,
    dst: str | bytes,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    flow_label: int = 0,
    traffic_class: int = 0,
    ext: tuple[tuple[int, bytes], ...] = (),
    payload_length: int | None = None,
) -> bytes:
    """An IPv6 packet. ``ext`` is a chain of extension headers ``(type, body)`` placed before
    ``payload``: hop-by-hop 0, routing 43, fragment 44, destination options 60. Each body excludes
    the next-header byte (and, except for the fragment header, the length byte) and is padded to a
    multiple of 8 bytes with it; a fragment body is its 6 bytes (offset/flags and identification).
    """
    chain = b""
    nh = next_header
    for typ, body in reversed(ext):
        if typ == 44:
            hdr = struct.pack("!BB", nh, 0) + body[:6].ljust(6, b"\0")
        else:
            raw = body
            if (len(raw) + 2) % 8:
                raw += b"\0" * (8 - (len(raw) + 2) % 8)
            hdr = struct.pack("!BB", nh, (len(raw) + 2) // 8 - 1) + raw
        chain = hdr + chain
        nh = typ
    body = chain + payload
    plen = len(body) if payload_length is None else payload_length
    first = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB", first, plen, nh, hop_limit) + _addr(src) + _addr(dst) + body


def fragment(packet: bytes, size: int, ident: int | None = None) -> list[bytes]:
    """Split an IPv4 or IPv6 packet (as :func:`ipv4`/:func:`ipv6` build them) into fragments, as a
    sending stack does: each carries at most ``size`` bytes of the fragmentable part (rounded down to
    a multiple of 8), in offset order.

    IPv4: every fragment copies the whole header (options too: this builder does not tell copied
    options from the others), with its own total length, MF flag, offset and checksum; ``ident``
    overrides the identification. IPv6: a fragment header (identification ``ident``, default 0) goes
    after the unfragmentable part (the fixed header, hop-by-hop and routing headers).
    """
    size &= ~7
    if size < 8:
        raise ValueError("fragments must carry at least 8 bytes")
    out: list[bytes] = []
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        hdr = bytearray(packet[:ihl])
        if ident is not None:
            hdr[4:6] = struct.pack("!H", ident & 0xFFFF)
        body = packet[ihl:struct.unpack_from("!H", packet, 2)[0]]
        for off in range(0, max(len(body), 1), size):
            piece = body[off:off + size]
            h = bytearray(hdr)
            h[2:4] = struct.pack("!H", ihl + len(piece))
            fw = (struct.unpack_from("!H", hdr, 6)[0] & 0x4000) | (0x2000 if off + size < len(body) else 0) | (off >> 3)
            h[6:8] = struct.pack("!H", fw)
            h[10:12] = b"\0\0"
            h[10:12] = struct.pack("!H", internet_checksum(bytes(h)))
            out.append(bytes(h) + piece)
        return out
    nh_at, off = 6, 40
    nh = packet[6]
    while nh in (0, 43):  # hop-by-hop and routing headers stay in every fragment
        nh_at = off
        nh = packet[off]
        off += (packet[off + 1] + 1) * 8
    unfrag = bytearray(packet[:off])
    unfrag[nh_at] = 44
    body = packet[off:40 + struct.unpack_from("!H", packet, 4)[0]]
    for o in range(0, max(len(body), 1), size):
        piece = body[o:o + size]
        fh = struct.pack("!BBHI", nh, 0, o | (1 if o + size < len(body) else 0), (ident or 0) & 0xFFFFFFFF)
        u = bytearray(unfrag)
        u[4:6] = struct.pack("!H", len(u) - 40 + 8 + len(piece))
        out.append(bytes(u) + fh + piece)
    return out


def ip(src: str | bytes, dst: str | bytes, proto: int, payload: bytes, **kw: object) -> bytes:
    """IPv4 or IPv6, whichever the addresses are."""
    s = _addr(src)
    if len(s) == 4:
        return ipv4(s, dst, proto, payload, **kw)  # type: ignore[arg-type]
    return ipv6(s, dst, proto, payload, **kw)  # type: ignore[arg-type]


def tcp(
    src: str | bytes,
    dst: str | bytes,
    sport: int,
    dport: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: str | int = "S",
    window: int = 65535,
    payload: bytes = b"",
    options: bytes = b"",
    urgent: int = 0,
    checksum: int | None = None,
) -> bytes:
    """A TCP segment with its checksum over the pseudo-header of ``src``/``dst`` (the IP addresses)."""
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)  # NOP padding
    doff = 5 + len(options) // 4
    hdr = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            doff << 4,
            tcp_flags(flags),
            window,
            0,
            urgent,
        )
        + options
    )
    seg = hdr + payload
    c = l4_checksum(_addr(src), _addr(dst), 6, seg) if checksum is None else checksum
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(
    src: str | bytes, dst: str | bytes, sport: int, dport: int, payload: bytes = b"", *, checksum: int | None = None
) -> bytes:
    """A UDP datagram with its checksum (0 computed as 0xFFFF, as RFC 768 requires)."""
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if checksum is None:
        checksum = l4_checksum(_addr(src), _addr(dst), 17, seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", checksum) + seg[8:]


def icmp(type_: int, code: int = 0, rest: bytes = b"\0\0\0\0", payload: bytes = b"") -> bytes:
    """An ICMP (IPv4) message; for echo, ``rest`` is identifier and sequence (see :func:`echo_rest`)."""
    msg = struct.pack("!BBH", type_, code, 0) + rest[:4].ljust(4, b"\0") + payload
    c = internet_checksum(msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def icmp6(
    src: str | bytes, dst: str | bytes, type_: int, code: int = 0, rest: bytes = b"\0\0\0\0", payload: bytes = b""
) -> bytes:
    """An ICMPv6 message with its checksum over the IPv6 pseudo-header."""
    msg = struct.pack("!BBH", type_, code, 0) + rest[:4].ljust(4, b"\0") + payload
    c = l4_checksum(_addr(src), _addr(dst), 58, msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def echo_rest(ident: int, seq: int) -> bytes:
    """The identifier/sequence word of an ICMP or ICMPv6 echo message."""
    return struct.pack("!HH", ident & 0xFFFF, seq & 0xFFFF)


def arp(
    op: int,
    sha: str | bytes,
    spa: str | bytes,
    tha: str | bytes = b"\0" * 6,
    tpa: str | bytes = b"\0" * 4,
) -> bytes:
    """An Ethernet/IPv4 ARP message (op 1 request, 2 reply); wrap it with ``ether(..., ETH_ARP)``."""
    return struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, op) + _addr(sha) + _addr(spa) + _addr(tha) + _addr(tpa)


def arp_frame(
    op: int, sha: str | bytes, spa: str | bytes, tha: str | bytes = b"\xff" * 6, tpa: str | bytes = b"\0" * 4
) -> bytes:
    """A complete ARP frame (broadcast for requests)."""
    dst = b"\xff" * 6 if op == 1 else _addr(tha)
    return ether(arp(op, sha, spa, b"\0" * 6 if op == 1 else tha, tpa), ETH_ARP, src=sha, dst=dst)
