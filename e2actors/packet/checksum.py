"""Internet checksums (RFC 1071) and header rewriting with correct checksums (RFC 1624).

The one's-complement sum of 16-bit words equals the big-endian integer value of the data modulo
0xFFFF (because 2**16 = 1 mod 0xFFFF), so :func:`ones_sum` is one ``int.from_bytes`` and one ``%`` in
C instead of a Python loop over words. Rewrites (what NAT does to every packet) update checksums
incrementally: the cost is independent of the payload size, and a checksum that was wrong before
stays exactly as wrong, as RFC 1624 intends (a middlebox must not hide corruption).
"""

from __future__ import annotations

import struct

from e2actors.packet.packet import Packet

__all__ = [
    "fix_checksums",
    "internet_checksum",
    "ipv4_header_checksum",
    "l4_checksum",
    "ones_sum",
    "pseudo_header",
    "rewrite",
    "verify_checksums",
]


def ones_sum(data: bytes, start: int = 0) -> int:
    """One's-complement 16-bit sum of ``data`` (odd length padded with a zero byte), plus ``start``."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    v = int.from_bytes(data, "big") + start
    if v == 0:
        return 0
    s = v % 0xFFFF
    # A non-zero sum in one's complement is never +0: 0xFFFF (-0) stands for multiples of 0xFFFF.
    return s if s else 0xFFFF


def internet_checksum(data: bytes, start: int = 0) -> int:
    """The RFC 1071 checksum of ``data``: the complement of its one's-complement sum."""
    return ~ones_sum(data, start) & 0xFFFF


def ipv4_header_checksum(header: bytes) -> int:
    """Checksum of an IPv4 header (its checksum field, bytes 10-11, counted as zero)."""
    return internet_checksum(bytes(header[:10]) + b"\0\0" + bytes(header[12:]))


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The TCP/UDP/ICMPv6 pseudo-header: IPv4 (RFC 793) for 4-byte addresses, else IPv6 (RFC 8200)."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes) -> int:
    """Checksum of a TCP/UDP/ICMPv6 segment (its checksum field must be zeroed) with the pseudo-header.

    ICMP over IPv4 has no pseudo-header: use :func:`internet_checksum` for it. A UDP result of 0 is
    sent as 0xFFFF (0 means "no checksum"); that is the caller's rule, see :func:`_udp_fix`.
    """
    return internet_checksum(pseudo_header(src, dst, proto, len(segment)) + bytes(segment))


_CSUM_AT = {6: 16, 17: 6, 58: 2, 1: 2}  # where each protocol keeps its checksum in its header


def _udp_fix(c: int) -> int:
    return 0xFFFF if c == 0 else c


def fix_checksums(pkt: Packet) -> bytes:
    """A copy of the frame with the IPv4 header and the TCP/UDP/ICMP/ICMPv6 checksums recomputed.

    Only whole, well-formed, unfragmented datagrams get their layer-4 checksum recomputed (a
    fragment does not hold the whole segment); the IPv4 header checksum is always refreshed.
    """
    if pkt.reason is not None or pkt.proto < 0:
        return pkt.data
    buf = bytearray(pkt.data)
    l3 = pkt.l3_offset
    v4 = pkt.ethertype == 0x0800
    if v4:
        ihl = (buf[l3] & 15) * 4
        buf[l3 + 10 : l3 + 12] = b"\0\0"
        struct.pack_into("!H", buf, l3 + 10, internet_checksum(bytes(buf[l3 : l3 + ihl])))
        end = l3 + (buf[l3 + 2] << 8 | buf[l3 + 3])
    else:
        end = l3 + 40 + (buf[l3 + 4] << 8 | buf[l3 + 5])
    if pkt.frag or pkt.truncated or pkt.l4_offset < 0 or pkt.proto not in _CSUM_AT:
        return bytes(buf)
    l4 = pkt.l4_offset
    at = l4 + _CSUM_AT[pkt.proto]
    if pkt.proto == 17:
        end = l4 + (buf[l4 + 4] << 8 | buf[l4 + 5])
    buf[at : at + 2] = b"\0\0"
    seg = bytes(buf[l4:end])
    if pkt.proto == 1:
        c = internet_checksum(seg)
    else:
        c = l4_checksum(pkt.src, pkt.dst, pkt.proto, seg)
        if pkt.proto == 17:
            c = _udp_fix(c)
    struct.pack_into("!H", buf, at, c)
    return bytes(buf)


def verify_checksums(pkt: Packet) -> dict[str, bool]:
    """Which checksums of the packet are right: keys among 'ip', 'tcp', 'udp', 'icmp', 'icmp6'.

    Checksums that cannot be checked (fragments, frames cut by the snap length, UDP over IPv4 with
    checksum 0 meaning "none") are left out.
    """
    out: dict[str, bool] = {}
    if pkt.reason is not None or pkt.proto < 0:
        return out
    d = pkt.data
    l3 = pkt.l3_offset
    if pkt.ethertype == 0x0800:
        ihl = (d[l3] & 15) * 4
        out["ip"] = ones_sum(d[l3 : l3 + ihl]) == 0xFFFF
        end = l3 + (d[l3 + 2] << 8 | d[l3 + 3])
    else:
        end = l3 + 40 + (d[l3 + 4] << 8 | d[l3 + 5])
    if pkt.frag or pkt.truncated or pkt.l4_offset < 0 or pkt.proto not in _CSUM_AT:
        return out
    l4 = pkt.l4_offset
    name = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}[pkt.proto]
    if pkt.proto == 17:
        end = l4 + (d[l4 + 4] << 8 | d[l4 + 5])
        if pkt.ethertype == 0x0800 and d[l4 + 6] == 0 and d[l4 + 7] == 0:
            return out
    seg = d[l4:end]
    if pkt.proto == 1:
        out[name] = ones_sum(seg) == 0xFFFF
    else:
        out[name] = ones_sum(pseudo_header(pkt.src, pkt.dst, pkt.proto, len(seg)) + seg) == 0xFFFF
    return out


def _adjust(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over every 16-bit word that changed."""
    # ~m summed over the old words is the complement of their sum; one ones_sum call does all words.
    s = ones_sum(new, ~csum & 0xFFFF)
    s = ones_sum(b"", s + (~ones_sum(old) & 0xFFFF))
    return ~s & 0xFFFF


def rewrite(
    pkt: Packet,
    src: bytes | None = None,
    dst: bytes | None = None,
    sport: int | None = None,
    dport: int | None = None,
) -> bytes:
    """A new frame with the IP addresses and/or TCP/UDP ports replaced and every checksum updated.

    Addresses are packed bytes of the packet's own family (4 or 16). The IPv4 header checksum and
    the TCP/UDP checksum (whose pseudo-header covers the addresses) are adjusted incrementally; a
    UDP-over-IPv4 checksum of 0 ("none") stays 0. For a non-first fragment only the IP header
    changes (its ports live in the first fragment). ICMP over IPv4 has no pseudo-header, so address
    changes leave it alone. Raises ``ValueError`` for a malformed or non-IP packet, a port change on
    a packet without ports, or an address of the wrong size.
    """
    if pkt.reason is not None:
        raise ValueError(f"cannot rewrite a malformed packet ({pkt.reason})")
    if pkt.proto < 0 or pkt.ethertype not in (0x0800, 0x86DD):
        raise ValueError("cannot rewrite a packet without an IP header")
    alen = len(pkt.src)
    for a in (src, dst):
        if a is not None and len(a) != alen:
            raise ValueError(f"address of {len(a)} bytes for an IPv{4 if alen == 4 else 6} packet")
    if (sport is not None or dport is not None) and pkt.sport < 0:
        raise ValueError("packet has no ports to rewrite")
    buf = bytearray(pkt.data)
    l3, l4 = pkt.l3_offset, pkt.l4_offset
    old_addr = pkt.src + pkt.dst
    new_addr = (src if src is not None else pkt.src) + (dst if dst is not None else pkt.dst)
    a_at = l3 + 12 if alen == 4 else l3 + 8
    buf[a_at : a_at + 2 * alen] = new_addr
    if alen == 4:
        c = buf[l3 + 10] << 8 | buf[l3 + 11]
        struct.pack_into("!H", buf, l3 + 10, _adjust(c, old_addr, new_addr))
    if l4 < 0:
        return bytes(buf)
    old_l4 = bytes(buf[l4 : l4 + 4])
    if pkt.sport >= 0:
        struct.pack_into("!HH", buf, l4, pkt.sport if sport is None else sport, pkt.dport if dport is None else dport)
    at = _CSUM_AT.get(pkt.proto)
    # The checksum field must be inside the captured bytes; SCTP uses CRC32c, out of scope here.
    if at is None or pkt.proto == 1 or l4 + at + 2 > len(buf):
        return bytes(buf)
    c = buf[l4 + at] << 8 | buf[l4 + at + 1]
    if pkt.proto == 17 and c == 0 and alen == 4:
        return bytes(buf)  # "no checksum" stays so
    old = old_addr + old_l4
    new = new_addr + bytes(buf[l4 : l4 + 4])
    if pkt.proto == 58:  # ICMPv6: addresses only (no ports)
        old, new = old_addr, new_addr
    c = _adjust(c, old, new)
    if pkt.proto == 17:
        c = _udp_fix(c)
    struct.pack_into("!H", buf, l4 + at, c)
    return bytes(buf)
