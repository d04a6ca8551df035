"""One captured frame and its headers, parsed once.

:class:`Packet` is the object every NF and the switch handle. The switch parses each frame exactly
once, so parsing is written for speed: header fields come out of ``bytes`` indexing and precompiled
``struct.unpack_from`` calls, land in ``__slots__``, and nothing allocates per-header objects.

What is parsed eagerly (the fields the classifier, the balancer and most NFs read for every packet):
link layer (Ethernet with stacked 802.1Q/802.1ad tags, raw IP, BSD loopback, Linux cooked v1/v2),
ARP addresses, IPv4 (options skipped, fragments), IPv6 (hop-by-hop, routing, fragment, destination
options and AH extension headers skipped), TCP/UDP/SCTP ports, TCP flags, ICMP/ICMPv6 presence,
and the offsets of each layer. Rarely read fields (TCP seq/ack, TTL, ICMP type/code, ARP opcode, MAC
addresses, the symmetric flow key) are properties that read the already validated bytes on demand.

Hostile bytes never raise: a truncated or inconsistent frame gets ``reason`` set to a short string
(``malformed`` is then true) and whatever was parsed before the fault stays readable; the caller
counts and drops it. A frame cut short by the capture's snap length (``wirelen > len(data)``) is not
malformed as long as its headers up to layer 4 were captured: ``truncated`` tells it apart.

Sentinels: absent offsets and ports are ``-1``, absent addresses ``b""``, ``proto`` is ``-1`` when
there is no IP layer, ``ethertype`` is ``-1`` when the link layer gives none (an 802.3 length field
below 0x600 is kept as is: no network layer is parsed behind it). ``frag`` packs the fragment offset
in bytes with the more-fragments flag in bit 0 (``frag_offset``/``more_fragments`` unpack it); a
first fragment (offset 0, more to come) parses its transport header and ports like libpcap does
(the UDP length and TCP lengths cover the whole datagram, so they are not checked against the
fragment; its payload is the fragment's share); a non-first fragment has ``l4_offset == -1``, ports
-1 and its ``payload_offset`` at the fragment's data. :mod:`e2actors.packet.defrag` reassembles.
Offsets index ``data`` directly, so the filter language's ``ip[...]``/``tcp[...]`` byte access
is ``data[l3_offset + i]`` / ``data[l4_offset + i]``; ``wirelen`` is what ``less``/``greater`` test.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "Packet",
    "TCP_ACK",
    "TCP_CWR",
    "TCP_ECE",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "format_addr",
    "format_mac",
    "parse_addr",
]

# --- link types (the pcap/pcapng LINKTYPE_* numbers) -----------------------------------------------
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, version nibble decides
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113  # Linux "cooked" capture v1 (16-byte header)
LINKTYPE_LINUX_SLL2 = 276  # Linux "cooked" capture v2 (20-byte header)
_RAW_ALIASES = (12, 14, 101, 228, 229)  # DLT_RAW differs across platforms; 228/229 = IPv4/IPv6 only

# --- ethertypes and IP protocol numbers -------------------------------------------------------------
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))  # 802.1Q, 802.1ad, legacy QinQ
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
PROTO_SCTP = 132
# IPv6 extension headers we walk over: hop-by-hop, routing, destination options, AH (fragment apart).
_IP6_EXT = frozenset((0, 43, 60, 51))
_IP6_FRAG = 44
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# Precompiled unpackers: one C call per header instead of one per field.
# Only the fields parsed eagerly; pad bytes ("x") skip the rest without building objects.
# Literal numbers (0x0800, 6, ...) in Packet.__init__ avoid global lookups in the hot path.
_ip4_hdr = struct.Struct("!BxH2xH1xB2x4s4s").unpack_from  # ver/ihl, total length, flags/frag, proto, src, dst
_tcp_hdr = struct.Struct("!HH8xBB").unpack_from  # ports, data offset byte, flags
# The fast paths: Ethernet type + IPv4 (no options) + the first 14 bytes of TCP/UDP, in one call:
# ethertype, ver/ihl, total length, flags/frag, proto, src, dst, sport, dport, UDP length (the top
# of the TCP sequence number for TCP), TCP data offset byte and flags (UDP payload for UDP).
_fast4 = struct.Struct("!12xHBxH2xH1xB2x4s4sHHH6xBB").unpack_from
# The same for IPv6 without extension headers: ethertype, version/class byte, payload length,
# next header, src, dst, then the same layer-4 fields at offset 54.
_fast6 = struct.Struct("!12xHB3xHBx16s16sHHH6xBB").unpack_from
_FAST = True  # tests turn the fast paths off to check they agree with the general parser
_udp_hdr = struct.Struct("!HHH").unpack_from  # ports, length
_ip6_hdr = struct.Struct("!HH16s16s").unpack_from  # at +4: payload length, next header/hlim, src, dst
_ports = struct.Struct("!HH").unpack_from
_u32 = struct.Struct("!I").unpack_from


class Packet:
    """A frame with its headers parsed once (see the module docstring for the conventions).

    Build one with ``Packet(data, ts=..., port=..., wirelen=..., linktype=...)`` or the equivalent
    :meth:`parse`. ``data`` must be ``bytes`` (addresses are slices of it and must be hashable);
    :meth:`parse` also accepts a ``bytearray`` or ``memoryview`` and copies it (the hot path skips
    that check). ``meta`` is the per-packet metadata dict that travels with the packet between NFs
    and servers; keep its values msgpack-safe (None, bool, int, float, str, bytes, lists, dicts).
    """

    # Each slot store costs; only the fields read for (nearly) every packet are stored, the rest are
    # properties over the validated bytes.
    __slots__ = (
        "data",  # the frame as captured (bytes)
        "ts",  # capture time, seconds since the epoch (float)
        "wirelen",  # length on the wire; > len(data) when the capture cut the frame
        "port",  # name of the input port the frame arrived on
        "meta_if_any",  # the metadata dict, or None while the packet has none (reading it creates nothing)
        "linktype",  # LINKTYPE_* of data
        "reason",  # None, or why the frame is malformed
        "vlans",  # VLAN ids, outermost first (tuple of int)
        "ethertype",  # after the VLAN tags; -1 when the link layer has none
        "l3_offset",  # start of the network header (ARP, IP), -1 if none
        "l4_offset",  # start of the transport header, -1 if none (e.g. non-first fragment)
        "payload_offset",  # start of the transport payload (or of the fragment data), -1 if none
        "payload_len",  # captured payload bytes, trimmed to the IP/UDP length (no Ethernet padding)
        "proto",  # upper-layer protocol (after IPv6 extension headers); -1 without IP
        "src",  # network source address, 4 or 16 bytes (ARP: sender IP); b"" if none
        "dst",  # network destination address
        "sport",  # TCP/UDP/SCTP source port, -1 if none
        "dport",  # TCP/UDP/SCTP destination port, -1 if none
        "tcp_flags",  # TCP flag byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128), 0 if not TCP
        "frag",  # fragment offset in bytes | 1 if more fragments follow; 0 when not a fragment
        "_fkey",  # the flow key once computed (the classifier, balancer and NFs all ask for it)
        # The ingress credit the packet holds (0: none): which input port admitted it, so the
        # switch that finishes it (sends it out, drops it) can give that port its credit back.
        "origin",
    )

    def __init__(
        self,
        data: bytes,
        ts: float = 0.0,
        port: str = "",
        wirelen: int | None = None,
        linktype: int = LINKTYPE_ETHERNET,
        meta: dict[str, Any] | None = None,
        origin: int = 0,
    ) -> None:
        n = len(data)
        self.data = data
        self.ts = ts
        self.port = port
        self.wirelen = n if wirelen is None else wirelen
        self.linktype = linktype
        self.meta_if_any = meta
        self._fkey = None
        self.origin = origin

        # Fast path: most frames are untagged Ethernet + IPv4 without options (or IPv6 without
        # extension headers) + TCP/UDP, unfragmented and whole. One precompiled unpack reads every
        # field of all three headers at once; a few tests confirm the guess and every length. Any
        # other frame (and every faulty one) falls through to the general parser below, which
        # parses it from scratch and names the fault.
        if linktype == 1 and n >= 48 and _FAST:
            l4 = 0  # set when the guess holds: the L4 offset, with pay, paylen and flags
            et, vihl, tot, fragw, proto, src, dst, sport, dport, ulen, doff, flags = _fast4(data)
            if et == 0x0800:
                if vihl == 0x45 and not fragw & 0x3FFF and tot + 14 <= n:
                    end = tot + 14
                    if proto == 6:
                        pay = 34 + (doff >> 4) * 4
                        if doff >= 0x50 and pay <= end:
                            l4 = 34
                    elif proto == 17 and ulen >= 8 and ulen + 34 <= end:
                        l4, pay, end, flags = 34, 42, ulen + 34, 0
            elif et == 0x86DD and n >= 68:
                et, vtc, plen, proto, src, dst, sport, dport, ulen, doff, flags = _fast6(data)
                end = plen + 54
                if vtc >> 4 == 6 and end <= n:
                    if proto == 6:
                        pay = 54 + (doff >> 4) * 4
                        if doff >= 0x50 and pay <= end:
                            l4 = 54
                    elif proto == 17 and ulen >= 8 and ulen + 54 <= end:
                        l4, pay, end, flags = 54, 62, ulen + 54, 0
            if l4:
                self.reason = None
                self.vlans = ()
                self.ethertype = et
                self.l3_offset = 14
                self.l4_offset = l4
                self.payload_offset = pay
                self.payload_len = end - pay
                self.proto = proto
                self.src = src
                self.dst = dst
                self.sport = sport
                self.dport = dport
                self.tcp_flags = flags
                self.frag = 0
                return

        # General parser. Defaults for every field; it overwrites what it finds.
        reason = None
        vlans: tuple[int, ...] = ()
        ethertype = -1
        l3 = l4 = pay = -1
        paylen = 0
        proto = sport = dport = -1
        src = dst = b""
        flags = 0
        frag = 0  # offset in bytes (a multiple of 8) | the MF flag in bit 0

        # The parser is one straight function (no helper calls) because call overhead dominates
        # at these sizes; `while True ... break` gives an early exit on the first fault.
        while True:
            # ---- link layer -> (ethertype, l3) ------------------------------------------------
            if linktype == 1:
                if n < 14:
                    reason = "truncated ethernet header"
                    break
                ethertype = data[12] << 8 | data[13]
                off = 14
                if ethertype != 0x0800 and ethertype in _VLAN_TPIDS:  # IPv4 skips the set lookup
                    tags = []
                    while ethertype in _VLAN_TPIDS:
                        if n < off + 4:
                            reason = "truncated vlan tag"
                            break
                        tags.append((data[off] << 8 | data[off + 1]) & 0x0FFF)
                        ethertype = data[off + 2] << 8 | data[off + 3]
                        off += 4
                    vlans = tuple(tags)
                    if reason is not None:
                        break
            elif linktype in _RAW_ALIASES:
                if n < 1:
                    reason = "empty frame"
                    break
                v = data[0] >> 4
                ethertype = ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else -1
                off = 0
            elif linktype == 0 or linktype == 108:
                if n < 4:
                    reason = "truncated loopback header"
                    break
                # DLT_NULL stores the family in the writer's byte order; the value is small, so
                # whichever half is non-zero tells the order.
                fam = int.from_bytes(data[:4], "big")
                if linktype == 0 and fam > 0xFFFF:
                    fam = int.from_bytes(data[:4], "little")
                ethertype = ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in _AF_INET6 else -1
                off = 4
            elif linktype == 113:
                if n < 16:
                    reason = "truncated linux cooked header"
                    break
                ethertype = data[14] << 8 | data[15]
                off = 16
            elif linktype == 276:
                if n < 20:
                    reason = "truncated linux cooked v2 header"
                    break
                ethertype = data[0] << 8 | data[1]
                off = 20
            else:
                reason = f"unsupported linktype {linktype}"
                break

            # ---- network layer ----------------------------------------------------------------
            if ethertype == 0x0800:
                l3 = off
                if n < off + 20:
                    reason = "truncated ipv4 header"
                    break
                vihl, tot, fragw, proto, src, dst = _ip4_hdr(data, off)
                end = lend = off + tot  # lend: where the IP datagram says it ends
                if vihl == 0x45 and tot >= 20 and end <= n:
                    off += 20  # the common case (no options, all captured): one test for all
                else:
                    if vihl >> 4 != 4:
                        reason = "ip version is not 4"
                        break
                    ihl = (vihl & 15) * 4
                    if ihl < 20:
                        reason = "bad ipv4 header length"
                        break
                    if tot < ihl:
                        reason = "ipv4 total length below header length"
                        break
                    if end > n:
                        if self.wirelen <= n:  # not a snaplen cut: the frame lies about its length
                            reason = "ipv4 total length beyond frame"
                            break
                        end = n
                    if off + ihl > end:
                        reason = "truncated ipv4 options"
                        break
                    off += ihl
                if fragw & 0x3FFF:  # MF set or a non-zero offset: a fragment
                    frag = (fragw & 0x1FFF) << 3 | (fragw & 0x2000) >> 13
                    if frag > 1:  # a non-first fragment carries no transport header
                        pay = off
                        paylen = end - off
                        break
            elif ethertype == 0x86DD:
                l3 = off
                if n < off + 40:
                    reason = "truncated ipv6 header"
                    break
                if data[off] >> 4 != 6:
                    reason = "ip version is not 6"
                    break
                plen, nh_hlim, src, dst = _ip6_hdr(data, off + 4)
                proto = nh_hlim >> 8
                end = lend = off + 40 + plen
                if end > n:
                    if self.wirelen <= n:
                        reason = "ipv6 payload length beyond frame"
                        break
                    end = n
                off += 40
                # Walk the extension headers to the upper-layer protocol.
                while True:
                    if proto in _IP6_EXT:
                        if off + 8 > end:
                            reason = "truncated ipv6 extension header"
                            break
                        # AH counts its length in 4-byte units (minus 2), the others in 8-byte units.
                        hlen = (data[off + 1] + 2) * 4 if proto == 51 else (data[off + 1] + 1) * 8
                        if off + hlen > end:
                            reason = "truncated ipv6 extension header"
                            break
                        proto = data[off]
                        off += hlen
                    elif proto == 44:
                        if off + 8 > end:
                            reason = "truncated ipv6 fragment header"
                            break
                        fw = data[off + 2] << 8 | data[off + 3]
                        frag = fw & 0xFFF9  # offset (bits 3-15) and M flag (bit 0), like IPv4 above
                        proto = data[off]
                        off += 8
                        if frag > 1:
                            break  # a later fragment: what follows is data, not more headers
                    else:
                        break
                if reason is not None:
                    break
                if frag > 1:
                    pay = off
                    paylen = end - off
                    break
            elif ethertype == 0x0806:
                l3 = off
                if n < off + 8:
                    reason = "truncated arp header"
                    break
                hln = data[off + 4]
                pln = data[off + 5]
                if n < off + 8 + 2 * (hln + pln):
                    reason = "truncated arp addresses"
                    break
                a = off + 8 + hln
                src = data[a : a + pln]
                a += pln + hln
                dst = data[a : a + pln]
                break
            else:
                break  # other link-layer protocols: no network layer we know

            # ---- transport layer (off = its start, end = end of the IP payload) ---------------
            # A first fragment (frag == 1: offset 0, more to come) carries the transport header
            # but only the start of the payload: its ports are real (libpcap's port tests match it
            # too), the lengths in the header cover the whole datagram.
            l4 = off
            if proto == 6:
                if off + 20 > end:
                    # A first fragment that does not hold the whole TCP header (RFC 1858's tiny
                    # fragment attack): its flags and ports cannot be judged, so it is not trusted.
                    reason = "tcp header split across fragments" if frag and end == lend else "truncated tcp header"
                    break
                sport, dport, doff, flags = _tcp_hdr(data, off)
                pay = off + (doff >> 4) * 4
                if doff < 0x50 or pay > end:  # data offset below 5 words, or past the captured end
                    if doff < 0x50:
                        reason = "bad tcp data offset"
                        pay = -1
                        break
                    if pay > lend:
                        reason = "tcp header split across fragments" if frag else "tcp data offset past end"
                        pay = -1
                        break
                    pay = end  # options cut by the snap length: not the sender's fault
                paylen = end - pay
            elif proto == 17:
                if off + 8 > end:
                    reason = "truncated udp header"
                    break
                sport, dport, ulen = _udp_hdr(data, off)
                if ulen < 8:
                    reason = "bad udp length"
                    break
                if off + ulen > lend and not frag:  # a first fragment holds only the start
                    reason = "udp length beyond ip payload"
                    break
                pay = off + 8
                if off + ulen < end:
                    end = off + ulen  # bytes after the UDP length are not payload
                paylen = end - pay
            elif proto == 1 or proto == 58:
                if off + 8 > end:
                    reason = "truncated icmp header"
                    break
                pay = off + 8
                paylen = end - pay
            elif proto == 132:
                if off + 12 > end:
                    reason = "truncated sctp header"
                    break
                sport, dport = _ports(data, off)
                pay = off + 12
                paylen = end - pay
            else:
                pay = off  # GRE, ESP, ...: the payload starts at the protocol's header
                paylen = end - off
            break

        self.reason = reason
        self.vlans = vlans
        self.ethertype = ethertype
        self.l3_offset = l3
        self.l4_offset = l4
        self.payload_offset = pay
        self.payload_len = paylen
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.tcp_flags = flags
        self.frag = frag

    # ------------------------------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        data: bytes,
        ts: float = 0.0,
        port: str = "",
        wirelen: int | None = None,
        linktype: int = LINKTYPE_ETHERNET,
        meta: dict[str, Any] | None = None,
    ) -> Packet:
        """Parse ``data`` (a frame of ``linktype``) into a :class:`Packet`; never raises on bad bytes.

        Unlike the constructor, accepts any buffer (``bytearray``, ``memoryview``) and copies it.
        """
        if type(data) is not bytes:
            data = bytes(data)
        return cls(data, ts, port, wirelen, linktype, meta)

    def __repr__(self) -> str:
        if self.reason is not None:
            return f"<Packet {len(self.data)}B malformed: {self.reason}>"
        what = f"proto={self.proto}" if self.proto >= 0 else f"ethertype=0x{self.ethertype & 0xFFFF:04x}"
        ends = ""
        if self.src:
            s, d = format_addr(self.src), format_addr(self.dst)
            if self.sport >= 0:
                s, d = f"{s}:{self.sport}", f"{d}:{self.dport}"
            ends = f" {s} > {d}"
        return f"<Packet {len(self.data)}B {what}{ends}>"

    @property
    def meta(self) -> dict[str, Any]:
        """Per-packet metadata (msgpack-safe values); created on first use, most packets never need one."""
        m = self.meta_if_any
        if m is None:
            m = self.meta_if_any = {}
        return m

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self.meta_if_any = value

    @property
    def has_meta(self) -> bool:
        """True when the packet carries metadata (without creating an empty dict as :attr:`meta` would;
        hot loops read :attr:`meta_if_any`, the dict or None, directly)."""
        return bool(self.meta_if_any)

    # --- state -----------------------------------------------------------------------------------
    @property
    def malformed(self) -> bool:
        """True when the frame is truncated or inconsistent (see :attr:`reason`)."""
        return self.reason is not None

    @property
    def truncated(self) -> bool:
        """True when the capture kept fewer bytes than were on the wire (snap length)."""
        return self.wirelen > len(self.data)

    @property
    def payload(self) -> bytes:
        """The transport payload (captured bytes only, without Ethernet padding)."""
        if self.payload_offset < 0:
            return b""
        return self.data[self.payload_offset : self.payload_offset + self.payload_len]

    # --- link layer ------------------------------------------------------------------------------
    @property
    def eth_dst(self) -> bytes:
        """Destination MAC (6 bytes), b"" when the link layer is not Ethernet."""
        return self.data[0:6] if self.linktype == 1 and len(self.data) >= 14 else b""

    @property
    def eth_src(self) -> bytes:
        """Source MAC (6 bytes), b"" when the link layer is not Ethernet."""
        return self.data[6:12] if self.linktype == 1 and len(self.data) >= 14 else b""

    # --- network layer ---------------------------------------------------------------------------
    @property
    def ip_version(self) -> int:
        """4, 6, or 0 when the packet has no IP header."""
        et = self.ethertype
        return 4 if et == ETH_IPV4 and self.l3_offset >= 0 else 6 if et == ETH_IPV6 and self.l3_offset >= 0 else 0

    @property
    def is_ip(self) -> bool:
        """True for IPv4 and IPv6 packets with a readable IP header."""
        return self.proto >= 0

    @property
    def is_fragment(self) -> bool:
        """True for any piece of a fragmented datagram (first, middle or last)."""
        return self.frag != 0

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (IPv4, or the IPv6 fragment header); 0 for a first fragment."""
        return self.frag & ~7

    @property
    def more_fragments(self) -> bool:
        """The MF (IPv4) or M (IPv6) flag: more fragments of this datagram follow."""
        return bool(self.frag & 1)

    @property
    def ttl(self) -> int:
        """IPv4 TTL or IPv6 hop limit, -1 without IP."""
        if self.proto < 0:
            return -1
        return self.data[self.l3_offset + (8 if self.ethertype == ETH_IPV4 else 7)]

    @property
    def ip_id(self) -> int:
        """IPv4 identification, -1 otherwise."""
        if self.proto < 0 or self.ethertype != ETH_IPV4:
            return -1
        o = self.l3_offset
        return self.data[o + 4] << 8 | self.data[o + 5]

    @property
    def ip_header_len(self) -> int:
        """IPv4 header length in bytes (with options), 40 for IPv6, 0 without IP."""
        if self.proto < 0:
            return 0
        if self.ethertype == ETH_IPV4:
            return (self.data[self.l3_offset] & 15) * 4
        return 40

    @property
    def src_str(self) -> str:
        """Source address as text ('' when none)."""
        return format_addr(self.src)

    @property
    def dst_str(self) -> str:
        """Destination address as text ('' when none)."""
        return format_addr(self.dst)

    # --- ARP -------------------------------------------------------------------------------------
    @property
    def arp_op(self) -> int:
        """ARP opcode (1 request, 2 reply), -1 when not ARP."""
        if self.ethertype != ETH_ARP or self.l3_offset < 0 or len(self.data) < self.l3_offset + 8:
            return -1
        o = self.l3_offset
        return self.data[o + 6] << 8 | self.data[o + 7]

    @property
    def arp_sha(self) -> bytes:
        """ARP sender hardware address, b"" when not ARP."""
        if self.arp_op < 0 or self.malformed:
            return b""
        o = self.l3_offset
        return self.data[o + 8 : o + 8 + self.data[o + 4]]

    @property
    def arp_tha(self) -> bytes:
        """ARP target hardware address, b"" when not ARP."""
        if self.arp_op < 0 or self.malformed:
            return b""
        o = self.l3_offset
        hln, pln = self.data[o + 4], self.data[o + 5]
        a = o + 8 + hln + pln
        return self.data[a : a + hln]

    # --- transport layer -------------------------------------------------------------------------
    def _tcp_ok(self) -> bool:
        return self.proto == PROTO_TCP and self.l4_offset >= 0 and self.payload_offset >= 0 and self.reason is None

    @property
    def tcp_seq(self) -> int:
        """TCP sequence number, -1 when not TCP."""
        return _u32(self.data, self.l4_offset + 4)[0] if self._tcp_ok() else -1

    @property
    def tcp_ack(self) -> int:
        """TCP acknowledgement number, -1 when not TCP."""
        return _u32(self.data, self.l4_offset + 8)[0] if self._tcp_ok() else -1

    @property
    def tcp_data_offset(self) -> int:
        """TCP header length in bytes (with options), 0 when not TCP."""
        return (self.data[self.l4_offset + 12] >> 4) * 4 if self._tcp_ok() else 0

    @property
    def tcp_window(self) -> int:
        """TCP window field, -1 when not TCP."""
        if not self._tcp_ok():
            return -1
        o = self.l4_offset
        return self.data[o + 14] << 8 | self.data[o + 15]

    def _icmp_ok(self) -> bool:
        return (
            (self.proto == PROTO_ICMP or self.proto == PROTO_ICMP6) and self.payload_offset >= 0 and self.l4_offset >= 0
        )

    @property
    def icmp_type(self) -> int:
        """ICMP or ICMPv6 type, -1 otherwise."""
        return self.data[self.l4_offset] if self._icmp_ok() else -1

    @property
    def icmp_code(self) -> int:
        """ICMP or ICMPv6 code, -1 otherwise."""
        return self.data[self.l4_offset + 1] if self._icmp_ok() else -1

    # --- flows -----------------------------------------------------------------------------------
    @property
    def flow_key(self) -> tuple:
        """A key equal for both directions of a connection.

        IP: ``(proto, lo_addr, lo_port, hi_addr, hi_port, vlans)`` where the (address, port) pairs
        are in canonical (sorted) order. Every piece of a fragmented datagram uses ports -1, so all
        its fragments share one key (only the first one carries ports). Without IP:
        ``(-ethertype - 1, lo_mac, -1, hi_mac, -1, vlans)`` so it cannot collide with an IP key.
        """
        k = self._fkey
        if k is not None:
            return k
        if self.proto >= 0:
            a, b = self.src, self.dst
            pa, pb = self.sport, self.dport
            if self.frag:
                pa = pb = -1
            if (a, pa) <= (b, pb):
                k = (self.proto, a, pa, b, pb, self.vlans)
            else:
                k = (self.proto, b, pb, a, pa, self.vlans)
        else:
            a, b = self.eth_src, self.eth_dst
            if b < a:
                a, b = b, a
            k = (-self.ethertype - 1 if self.ethertype >= 0 else -1, a, -1, b, -1, self.vlans)
        self._fkey = k
        return k

    @property
    def direction(self) -> int:
        """0 when the packet goes from the flow key's low end to its high end, 1 the other way."""
        if self.proto >= 0:
            pa, pb = self.sport, self.dport
            if self.frag:
                pa = pb = -1
            return 0 if (self.src, pa) <= (self.dst, pb) else 1
        return 0 if self.eth_src <= self.eth_dst else 1

    @property
    def five_tuple(self) -> tuple:
        """The directional ``(proto, src, sport, dst, dport)``."""
        return (self.proto, self.src, self.sport, self.dst, self.dport)


# --- address helpers ---------------------------------------------------------------------------
def format_addr(addr: bytes) -> str:
    """Text form of a 4-byte (IPv4), 16-byte (IPv6) or 6-byte (MAC) address; '' for b""."""
    n = len(addr)
    if n == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
    if n == 16:
        return str(ipaddress.IPv6Address(addr))
    if n == 6:
        return format_mac(addr)
    return addr.hex()


def format_mac(mac: bytes) -> str:
    """'aa:bb:cc:dd:ee:ff' form of a MAC address."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_addr(text: str | bytes) -> bytes:
    """Packed bytes of an IPv4/IPv6 address ('198.18.0.1', '2001:db8::1') or a MAC ('aa:bb:..')."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    if text.count(":") == 5 and "::" not in text and all(len(p) <= 2 for p in text.split(":")):
        return bytes(int(p, 16) for p in text.split(":"))
    return ipaddress.ip_address(text).packed
