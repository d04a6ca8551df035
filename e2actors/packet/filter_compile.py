"""Code generation for the pcap-filter language: syntax tree -> BPF-like IR -> Python source.

The IR mirrors what libpcap's ``gencode.c`` emits for an Ethernet (DLT_EN10MB) capture, test by
test and load by load, so that our predicate accepts exactly the packets libpcap's BPF program
accepts. The rules that matter for exactness:

* every load is bounds-checked against the captured bytes; a load past the end aborts the *whole*
  program with "reject", even inside an ``or`` whose other side would match. The generated Python
  indexes ``bytes`` directly and lets ``IndexError``/``struct.error`` escape to the top-level
  ``try``, which returns False — the same abort;
* division or modulus by zero at run time also rejects the packet; shifts by 32 or more give 0;
* all arithmetic is unsigned 32-bit;
* protocol checks come before the loads they guard, in libpcap's order (``tcp[...]`` checks
  "IPv4, protocol TCP, not a non-first fragment" and then loads relative to the IHL);
* each ``vlan`` adds 4 to the link-type and network-layer offsets of everything after it;
* libpcap's optimizer folds constants and drops a test whose outcome is known: ``x * 0`` is 0 and
  its loads vanish, ``x or <true>`` is true, ``x and <false>`` is false. We fold the same way.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

from e2actors.errors import FilterError
from e2actors.packet import filter_parser as P

__all__ = ["CodeGen", "compile_to_ir", "ir_to_python", "Compiler"]

M32 = 0xFFFFFFFF
#: Operands of an ``and``/``or`` run per generated helper function (see :class:`_Gen`).
CHUNK = 64
T: tuple = ("T",)
F: tuple = ("F",)

ETH_IP, ETH_ARP, ETH_RARP, ETH_IP6 = 0x0800, 0x0806, 0x8035, 0x86DD
ETHERMTU = 1500
IPPROTO = {"tcp": 6, "udp": 17, "sctp": 132}
PROTO_UNDEF = -1

# protocol name -> (ip protocol number, "ip"|"ip6"|"default") for gen_proto_abbrev
_ABBREV_PROTO = {
    "sctp": (132, "default"), "tcp": (6, "default"), "udp": (17, "default"),
    "icmp": (1, "ip"), "igmp": (2, "ip"), "igrp": (9, "ip"), "pim": (103, "default"),
    "vrrp": (112, "ip"), "carp": (112, "ip"), "icmp6": (58, "ip6"),
    "ah": (51, "default"), "esp": (50, "default"),
}
# protocol name -> ethertype (or LLC SAP) for gen_proto_abbrev
_ABBREV_LINK = {
    "ip": ETH_IP, "arp": ETH_ARP, "rarp": ETH_RARP, "ip6": ETH_IP6,
    "decnet": 0x6003, "lat": 0x6004, "sca": 0x6007, "moprc": 0x6002, "mopdl": 0x6001,
    "iso": 0xFE, "stp": 0x42, "netbeui": 0xF0,
}
# libpcap's pcap_nametoeproto / pcap_nametollc tables
_ETHER_PROTO_NAMES = {
    "aarp": 0x80F3, "arp": ETH_ARP, "atalk": 0x809B, "decnet": 0x6003, "ip": ETH_IP,
    "ip6": ETH_IP6, "lat": 0x6004, "loopback": 0x9000, "mopdl": 0x6001, "moprc": 0x6002,
    "rarp": ETH_RARP, "sca": 0x6007,
    "iso": 0xFE, "stp": 0x42, "ipx": 0xE0, "netbeui": 0xF0,
}
# used only when /etc/services or /etc/protocols is missing
_BUILTIN_SERVICES = {
    "ftp-data": (20, 20), "ftp": (21, 21), "ssh": (22, 22), "telnet": (23, 23),
    "smtp": (25, 25), "domain": (53, 53), "bootps": (None, 67), "bootpc": (None, 68),
    "tftp": (None, 69), "http": (80, None), "www": (80, None), "pop3": (110, 110),
    "ntp": (None, 123), "imap": (143, 143), "snmp": (161, 161), "bgp": (179, 179),
    "https": (443, 443), "syslog": (None, 514), "imaps": (993, 993), "pop3s": (995, 995),
}
_BUILTIN_PROTOCOLS = {
    "ip": 0, "icmp": 1, "igmp": 2, "ipencap": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44, "rsvp": 46, "gre": 47, "esp": 50, "ah": 51,
    "ipv6-icmp": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "ospf": 89, "pim": 103, "vrrp": 112,
    "l2tp": 115, "sctp": 132, "udplite": 136,
}

_services_cache: Optional[dict[str, dict[str, int]]] = None
_protocols_cache: Optional[dict[str, int]] = None


def _services() -> dict[str, dict[str, int]]:
    """name -> {"tcp": port, "udp": port} from /etc/services (first entry wins, like NSS)."""
    global _services_cache
    if _services_cache is None:
        table: dict[str, dict[str, int]] = {}
        try:
            with open("/etc/services", encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.split("#", 1)[0].split()
                    if len(line) < 2 or "/" not in line[1]:
                        continue
                    port_s, proto = line[1].split("/", 1)
                    if not port_s.isdigit():
                        continue
                    for name in [line[0], *line[2:]]:
                        table.setdefault(name, {}).setdefault(proto, int(port_s))
        except OSError:
            for name, (tp, up) in _BUILTIN_SERVICES.items():
                entry = table.setdefault(name, {})
                if tp is not None:
                    entry["tcp"] = tp
                if up is not None:
                    entry["udp"] = up
        _services_cache = table
    return _services_cache


def _protocols() -> dict[str, int]:
    """name -> IP protocol number from /etc/protocols (names and aliases)."""
    global _protocols_cache
    if _protocols_cache is None:
        table: dict[str, int] = {}
        try:
            with open("/etc/protocols", encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.split("#", 1)[0].split()
                    if len(line) >= 2 and line[1].isdigit():
                        for name in [line[0], *line[2:]]:
                            table.setdefault(name, int(line[1]))
        except OSError:
            table = dict(_BUILTIN_PROTOCOLS)
        _protocols_cache = table
    return _protocols_cache


# --- IR constructors with libpcap-optimizer-style simplification ------------------------------
def b_and(a: tuple, b: tuple) -> tuple:
    if a == T:
        return b
    if a == F:
        return F
    if b == T:
        return a
    if b == F:
        return F  # every path through ``a`` ends in reject: the optimizer deletes ``a``
    return ("and", a, b)


def b_or(a: tuple, b: tuple) -> tuple:
    if a == T:
        return T
    if a == F:
        return b
    if b == F:
        return a
    if b == T:
        return T
    return ("or", a, b)


def b_not(a: tuple) -> tuple:
    if a == T:
        return F
    if a == F:
        return T
    if a[0] == "not":
        return a[1]
    return ("not", a)


def k(n: int) -> tuple:
    return ("k", n & M32)


def ld(size: int, off: int) -> tuple:
    return ("ld", size, ("k", off & M32))


class Compiler:
    """Walk a syntax tree in source order (so ``vlan`` shifts what follows) and build the IR."""

    def __init__(self, expr: str, netmask: int = 0) -> None:
        self.expr = expr
        self.netmask = netmask
        self.shift = 0  # bytes added by each ``vlan`` seen so far

    # offsets, as libpcap's cstate->off_linktype / off_linkpl for Ethernet
    @property
    def off_linktype(self) -> int:
        return 12 + self.shift

    @property
    def off_linkpl(self) -> int:
        return 14 + self.shift

    def err(self, msg: str, column: int = 0) -> FilterError:
        return FilterError(msg, self.expr, column)

    # --- primitive comparisons -------------------------------------------------------------------
    def cmp(self, off: int, size: int, v: int, op: str = "==") -> tuple:
        return ("cmp", op, ld(size, off), k(v))

    def mcmp(self, off: int, size: int, v: int, mask: int) -> tuple:
        if mask == M32 or (size == 1 and mask == 0xFF) or (size == 2 and mask == 0xFFFF):
            return self.cmp(off, size, v)
        if mask == 0:
            # ``ld; and #0; jeq #0``: the optimizer folds it to true and drops the load
            return T if v == 0 else F
        return ("cmp", "==", ("bin", "&", ld(size, off), k(mask)), k(v))

    def ipfrag(self) -> tuple:
        """Not a fragment other than the first: ``ip[6:2] & 0x1fff = 0``."""
        return b_not(("jset", ld(2, self.off_linkpl + 6), 0x1FFF))

    def ihl(self) -> tuple:
        return ("ihl", self.off_linkpl)

    # --- link type -------------------------------------------------------------------------------
    def linktype(self, proto: int, column: int = 0) -> tuple:
        """libpcap's gen_ether_linktype."""
        lt = self.off_linktype
        if proto in (0xFE, 0x06, 0xF0):  # ISO, LLCSAP_IP, NetBEUI: DSAP and SSAP
            return b_and(b_not(self.cmp(lt, 2, ETHERMTU, ">")),
                         self.cmp(self.off_linkpl, 2, (proto << 8) | proto))
        if proto in (0xE0, 0x809B, 0x80F3):
            raise self.err(f"unsupported filter syntax: ether proto {proto:#x} (IPX/AppleTalk)",
                           column)
        if proto <= ETHERMTU:
            return b_and(b_not(self.cmp(lt, 2, ETHERMTU, ">")), self.cmp(lt + 2, 1, proto))
        return self.cmp(lt, 2, proto)

    # --- protocols -------------------------------------------------------------------------------
    def proto(self, v: int, proto: str, dir_: str, column: int) -> tuple:
        """libpcap's gen_proto: ``[ip|ip6|ether] proto V``."""
        if dir_ != "default":
            raise self.err("direction applied to 'proto'", column)
        if proto == "default":
            return b_or(self.proto(v, "ip", dir_, column), self.proto(v, "ip6", dir_, column))
        if proto == "link":
            return self.linktype(v, column)
        if proto == "ip":
            return b_and(self.linktype(ETH_IP), self.cmp(self.off_linkpl + 9, 1, v))
        if proto == "ip6":
            pl = self.off_linkpl
            frag = b_and(self.cmp(pl + 6, 1, 44), self.cmp(pl + 40, 1, v))
            return b_and(self.linktype(ETH_IP6), b_or(self.cmp(pl + 6, 1, v), frag))
        raise self.err(f"'{proto} proto' is not supported", column)

    def proto_abbrev(self, proto: str, column: int) -> tuple:
        """libpcap's gen_proto_abbrev: a protocol name on its own."""
        if proto in _ABBREV_PROTO:
            num, over = _ABBREV_PROTO[proto]
            return self.proto(num, over, "default", column)
        if proto in _ABBREV_LINK:
            return self.linktype(_ABBREV_LINK[proto], column)
        if proto == "link":
            raise self.err("link layer applied in wrong context", column)
        raise self.err(f"unsupported filter syntax: protocol '{proto}'", column)

    # --- hosts and nets --------------------------------------------------------------------------
    def hostop(self, addr: int, mask: int, dir_: str, ethertype: int, src_off: int, dst_off: int,
               column: int) -> tuple:
        if dir_ == "src":
            return b_and(self.linktype(ethertype),
                         self.mcmp(self.off_linkpl + src_off, 4, addr, mask))
        if dir_ == "dst":
            return b_and(self.linktype(ethertype),
                         self.mcmp(self.off_linkpl + dst_off, 4, addr, mask))
        a = self.hostop(addr, mask, "src", ethertype, src_off, dst_off, column)
        b = self.hostop(addr, mask, "dst", ethertype, src_off, dst_off, column)
        if dir_ == "and":
            return b_and(a, b)
        return b_or(a, b)

    def host(self, addr: int, mask: int, proto: str, dir_: str, column: int) -> tuple:
        """libpcap's gen_host for IPv4 addresses."""
        if proto == "default":
            b = b_or(self.host(addr, mask, "ip", dir_, column),
                     self.host(addr, mask, "arp", dir_, column))
            return b_or(b, self.host(addr, mask, "rarp", dir_, column))
        if proto == "ip":
            return self.hostop(addr, mask, dir_, ETH_IP, 12, 16, column)
        if proto == "arp":
            return self.hostop(addr, mask, dir_, ETH_ARP, 14, 24, column)
        if proto == "rarp":
            return self.hostop(addr, mask, dir_, ETH_RARP, 14, 24, column)
        if proto == "link":
            raise self.err("link layer applied in wrong context", column)
        raise self.err(f"'{proto}' modifier applied to host", column)

    def host6(self, addr: bytes, mask: bytes, proto: str, dir_: str, column: int) -> tuple:
        """libpcap's gen_host6."""
        if proto not in ("default", "ip6"):
            raise self.err(f"'{proto}' modifier applied to ip6 host", column)

        def op(off: int) -> tuple:
            b = self.linktype(ETH_IP6)
            for i in range(4):
                w = int.from_bytes(addr[4 * i:4 * i + 4], "big")
                m = int.from_bytes(mask[4 * i:4 * i + 4], "big")
                b = b_and(b, self.mcmp(self.off_linkpl + off + 4 * i, 4, w, m))
            return b

        if dir_ == "src":
            return op(8)
        if dir_ == "dst":
            return op(24)
        if dir_ == "and":
            return b_and(op(8), op(24))
        return b_or(op(8), op(24))

    def ehost(self, mac: bytes, dir_: str) -> tuple:
        """libpcap's gen_ehostop: ``ether host|src|dst MAC`` (never shifted by vlan)."""

        def op(off: int) -> tuple:
            return b_and(self.cmp(off + 2, 4, int.from_bytes(mac[2:], "big")),
                         self.cmp(off, 2, int.from_bytes(mac[:2], "big")))

        if dir_ == "src":
            return op(6)
        if dir_ == "dst":
            return op(0)
        if dir_ == "and":
            return b_and(op(6), op(0))
        return b_or(op(6), op(0))

    # --- ports -----------------------------------------------------------------------------------
    def _portatoms(self, atom, dir_: str, column: int) -> tuple:
        if dir_ == "src":
            return atom(0)
        if dir_ == "dst":
            return atom(2)
        if dir_ == "and":
            return b_and(atom(0), atom(2))
        if dir_ in ("default", "or"):
            return b_or(atom(0), atom(2))
        raise self.err(f"unsupported direction '{dir_}' for port", column)

    def _range_atom(self, load: tuple, lo: int, hi: int) -> tuple:
        if lo == hi:
            return ("cmp", "==", load, k(lo))
        return b_and(("cmp", ">=", load, k(lo)), ("cmp", "<=", load, k(hi)))

    def port(self, lo: int, hi: int, ip_proto: int, dir_: str, column: int) -> tuple:
        """libpcap's gen_port/gen_port6 (or gen_portrange when lo != hi), IPv6 part first."""
        protos = [132, 6, 17] if ip_proto == PROTO_UNDEF else [ip_proto]
        pl = self.off_linkpl

        def atom4(off: int) -> tuple:
            return self._range_atom(("ld", 2, ("off", self.ihl(), pl + off)), lo, hi)

        def atom6(off: int) -> tuple:
            return self._range_atom(ld(2, pl + 40 + off), lo, hi)

        b6 = F
        b4 = F
        for p in protos:
            b6 = b_or(b6, b_and(self.cmp(pl + 6, 1, p), self._portatoms(atom6, dir_, column)))
            b4 = b_or(b4, b_and(b_and(self.cmp(pl + 9, 1, p), self.ipfrag()),
                                self._portatoms(atom4, dir_, column)))
        return b_or(b_and(self.linktype(ETH_IP6), b6), b_and(self.linktype(ETH_IP), b4))

    def _port_proto(self, proto: str, column: int) -> int:
        if proto in IPPROTO:
            return IPPROTO[proto]
        if proto == "default":
            return PROTO_UNDEF
        raise self.err("illegal qualifier of 'port'", column)

    def _lookup_port(self, name: str, column: int) -> tuple[int, int]:
        """libpcap's pcap_nametoport: (port, real ip proto or PROTO_UNDEF)."""
        entry = _services().get(name)
        if not entry or ("tcp" not in entry and "udp" not in entry):
            raise self.err(f"unknown port '{name}'", column)
        tp, up = entry.get("tcp"), entry.get("udp")
        if tp is not None:
            return tp, (PROTO_UNDEF if up == tp else 6)
        return up, 17  # type: ignore[return-value]

    def _named_port(self, name: str, proto: str, column: int) -> tuple[int, int]:
        port, real = self._lookup_port(name, column)
        want = self._port_proto(proto, column)
        if want != PROTO_UNDEF:
            if real not in (PROTO_UNDEF, want):
                raise self.err(f"port '{name}' is {'tcp' if real == 6 else 'udp'}", column)
            real = want
        return port, real

    # --- qualified values ------------------------------------------------------------------------
    def prim(self, n: P.Prim) -> tuple:
        q = n.qual
        col = n.column
        if q is None:
            raise self.err("syntax error: a value needs a qualifier (host, port, ...)", col)
        proto, dir_, addr = q.proto, q.dir, q.addr
        if n.kind == "NUM" or (n.kind == "HID" and n.mask is None):
            return self.ncode(n, proto, dir_, addr)
        if n.kind == "HID":
            return self.mcode(n, proto, dir_, addr)
        if n.kind == "HID6":
            return self.mcode6(n, proto, dir_, addr)
        if n.kind == "EID":
            if addr in ("host", "default") and proto == "link":
                return self.ehost(_parse_mac(n.value, self, col), dir_)  # type: ignore[arg-type]
            raise self.err("ethernet address used in non-ether expression", col)
        return self.scode(n, proto, dir_, addr)

    def _check_addr_kind(self, addr: str, col: int, what: str = "IP address") -> None:
        if addr in ("port", "portrange", "proto", "protochain"):
            raise self.err(f"'{addr}' modifier applied to {what}", col)

    def ncode(self, n: P.Prim, proto: str, dir_: str, addr: str) -> tuple:
        """libpcap's gen_ncode: a number or a dotted IPv4 address with qualifiers."""
        col = n.column
        if n.kind == "HID":
            self._check_addr_kind(addr, col)
            v, vlen = _atoin(n.value, self, col)  # type: ignore[arg-type]
        else:
            v, vlen = n.value, 32  # type: ignore[assignment]
        if addr in ("default", "host", "net"):
            if proto == "link":
                raise self.err("illegal link layer address", col)
            mask = M32
            if n.kind == "NUM" and addr == "net":
                while v and (v & 0xFF000000) == 0:
                    v = (v << 8) & M32
                    mask = (mask << 8) & M32
            else:
                v = (v << (32 - vlen)) & M32
                mask = (mask << (32 - vlen)) & M32
            return self.host(v, mask, proto, dir_, col)
        if addr in ("port", "portrange"):
            ip_proto = self._port_proto(proto, col)
            if v > 65535:
                raise self.err(f"illegal port number {v} > 65535", col)
            return self.port(v, v, ip_proto, dir_, col)
        if addr == "proto":
            return self.proto(v, proto, dir_, col)
        raise self.err(f"unsupported filter syntax: '{addr}'", col)

    def scode(self, n: P.Prim, proto: str, dir_: str, addr: str) -> tuple:
        """libpcap's gen_scode: a name with qualifiers."""
        name: str = n.value  # type: ignore[assignment]
        col = n.column
        if addr == "port":
            port, real = self._named_port(name, proto, col)
            return self.port(port, port, real, dir_, col)
        if addr == "portrange":
            m = re.fullmatch(r"(\d+)-(\d+)", name)
            if m:
                p1, p2 = int(m.group(1)), int(m.group(2))
                want = self._port_proto(proto, col)
                real = want
            else:
                if "-" not in name:
                    raise self.err(f"unknown port in range '{name}'", col)
                a, b = name.split("-", 1)
                p1, r1 = self._named_port(a, proto, col)
                p2, r2 = self._named_port(b, proto, col)
                real = r1 if r1 == r2 else PROTO_UNDEF
            for p in (p1, p2):
                if p > 65535:
                    raise self.err(f"illegal port number {p} > 65535", col)
            return self.port(min(p1, p2), max(p1, p2), real, dir_, col)
        if addr == "proto":
            if proto in ("default", "ip", "ip6"):
                v = _protocols().get(name)
                if v is None:
                    raise self.err(f"unknown ip proto '{name}'", col)
            elif proto == "link":
                v = _ETHER_PROTO_NAMES.get(name)
                if v is None:
                    raise self.err(f"unknown ether proto '{name}'", col)
            else:
                raise self.err(f"'{proto} proto' is not supported", col)
            return self.proto(v, proto, dir_, col)
        if addr in ("default", "host", "net"):
            raise self.err(f"unsupported filter syntax: host or network name '{name}' "
                           "(name resolution is not supported; use an address)", col)
        raise self.err(f"unsupported filter syntax: '{addr}'", col)

    def mcode(self, n: P.Prim, proto: str, dir_: str, addr: str) -> tuple:
        """libpcap's gen_mcode: ``A/LEN`` or ``A mask M``."""
        col = n.column
        self._check_addr_kind(addr, col, "IP address and netmask")
        v, vlen = _atoin(n.value, self, col)  # type: ignore[arg-type]
        v = (v << (32 - vlen)) & M32
        if isinstance(n.mask, str):
            m, mlen = _atoin(n.mask, self, n.mask_column)
            m = (m << (32 - mlen)) & M32
            if v & ~m & M32:
                raise self.err(f'non-network bits set in "{n.value} mask {n.mask}"', col)
        else:
            if n.mask > 32:  # type: ignore[operator]
                raise self.err("mask length must be <= 32", n.mask_column)
            m = 0 if n.mask == 0 else (M32 << (32 - n.mask)) & M32  # type: ignore[operator]
            if v & ~m & M32:
                raise self.err(f'non-network bits set in "{n.value}/{n.mask}"', col)
        if addr != "net":
            raise self.err("Mask syntax for networks only", col)
        return self.host(v, m, proto, dir_, col)

    def mcode6(self, n: P.Prim, proto: str, dir_: str, addr: str) -> tuple:
        """libpcap's gen_mcode6: an IPv6 address, optionally ``/LEN``."""
        col = n.column
        self._check_addr_kind(addr, col)
        a = ipaddress.IPv6Address(n.value).packed  # type: ignore[arg-type]
        masklen = 128 if n.mask is None else n.mask
        if masklen > 128:  # type: ignore[operator]
            raise self.err("mask length must be <= 128", n.mask_column)
        mask = ((1 << 128) - (1 << (128 - masklen))).to_bytes(16, "big")  # type: ignore[operator]
        if any(x & ~y & 0xFF for x, y in zip(a, mask)):
            raise self.err(f'non-network bits set in "{n.value}/{masklen}"', col)
        if addr in ("default", "host"):
            if masklen != 128:
                raise self.err("Mask syntax for networks only", col)
        elif addr != "net":
            raise self.err("invalid qualifier against IPv6 address", col)
        return self.host6(a, mask, proto, dir_, col)

    # --- broadcast, multicast, vlan --------------------------------------------------------------
    def cast(self, n: P.Cast) -> tuple:
        proto, col = n.proto, n.column
        if n.what == "broadcast":
            if proto in ("default", "link"):
                return b_and(self.cmp(2, 4, 0xFFFFFFFF), self.cmp(0, 2, 0xFFFF))
            if proto == "ip":
                hostmask = ~self.netmask & M32
                b = b_or(self.mcmp(self.off_linkpl + 16, 4, 0, hostmask),
                         self.mcmp(self.off_linkpl + 16, 4, hostmask, hostmask))
                return b_and(self.linktype(ETH_IP), b)
            raise self.err("only link-layer/IP broadcast filters supported", col)
        if proto in ("default", "link"):
            return ("jset", ld(1, 0), 1)
        if proto == "ip":
            return b_and(self.linktype(ETH_IP), self.cmp(self.off_linkpl + 16, 1, 224, ">="))
        if proto == "ip6":
            return b_and(self.linktype(ETH_IP6), self.cmp(self.off_linkpl + 24, 1, 255))
        raise self.err("only link-layer/IP/IPv6 multicast filters supported", col)

    def vlan(self, n: P.Vlan) -> tuple:
        lt = self.off_linktype
        b = b_or(b_or(self.cmp(lt, 2, 0x8100), self.cmp(lt, 2, 0x88A8)), self.cmp(lt, 2, 0x9100))
        if n.vid is not None:
            if n.vid > 0x0FFF:
                raise self.err(f"VLAN tag {n.vid} greater than maximum 4095", n.column)
            b = b_and(b, self.mcmp(self.off_linkpl, 2, n.vid, 0x0FFF))
        self.shift += 4
        return b

    # --- arithmetic ------------------------------------------------------------------------------
    def arith(self, a: P.Arith) -> tuple[tuple, tuple]:
        """Return (protocol checks, value) for an arithmetic expression (libpcap's ``struct arth``:
        a binary operation keeps only its *left* operand's checks, as gen_arth does)."""
        if isinstance(a, P.Num):
            return T, k(a.value)
        if isinstance(a, P.Len):
            return T, ("len",)
        if isinstance(a, P.Neg):
            c, v = self.arith(a.expr)
            return c, fold_neg(v)
        if isinstance(a, P.BinOp):
            c0, v0 = self.arith(a.left)
            _c1, v1 = self.arith(a.right)
            self._gen_arth_checks(a)
            return c0, fold_bin(a.op, v0, v1, self, a.column)
        if isinstance(a, P.Load):
            return self.load(a)
        raise AssertionError(a)

    def _gen_arth_checks(self, a: P.BinOp) -> None:
        """libpcap's gen_arth refuses a division, modulus or shift whose right operand's *first
        instruction* loads the constant 0 (or, for a shift, more than 31), whatever that operand
        computes in the end: the first instruction of ``ip[0]``, ``-ip[0]`` or ``(ip[0] + 1)`` is
        the load of the index 0, so ``len / ip[0]`` is "division by zero" and ``len << tcp[32]``
        "shift by more than 31 bits" there. We refuse the same expressions (the folding in
        :func:`fold_bin` is the optimizer's check, which tcpdump also applies)."""
        op = {"LSH": "<<", "RSH": ">>"}.get(a.op, a.op)
        if op not in ("/", "%", "<<", ">>"):
            return
        first = a.right
        while not isinstance(first, (P.Num, P.Len)):  # to the operand's first instruction
            first = first.index if isinstance(first, P.Load) else first.left if isinstance(first, P.BinOp) \
                else first.expr
        if not isinstance(first, P.Num):
            return
        if op == "/" and first.value == 0:
            raise self.err("division by zero", a.column)
        if op == "%" and first.value == 0:
            raise self.err("modulus by zero", a.column)
        if op in ("<<", ">>") and first.value > 31:
            raise self.err("shift by more than 31 bits", a.column)

    def load(self, a: P.Load) -> tuple[tuple, tuple]:
        """libpcap's gen_load: ``proto[index:size]``."""
        ci, vi = self.arith(a.index)
        proto, size, col = a.proto, a.size, a.column
        if proto == "link":
            return ci, ("ld", size, _offset(vi, 0))
        if proto in ("ip", "arp", "rarp", "ip6", "decnet", "lat", "sca", "moprc", "mopdl"):
            cond = b_and(ci, self.proto_abbrev(proto, col))
            return cond, ("ld", size, _offset(vi, self.off_linkpl))
        if proto in ("tcp", "udp", "sctp", "icmp", "igmp", "igrp", "pim", "vrrp", "carp"):
            inner = b_and(self.proto_abbrev(proto, col), self.ipfrag())
            cond = b_and(self.linktype(ETH_IP), b_and(ci, inner))
            x = fold_bin("+", vi, self.ihl(), self, col)
            return cond, ("ld", size, ("off", x, self.off_linkpl))
        if proto == "icmp6":
            pl = self.off_linkpl
            cond = b_and(ci, b_and(self.linktype(ETH_IP6), self.cmp(pl + 6, 1, 58)))
            return cond, ("ld", size, _offset(vi, pl + 40))
        raise self.err(f"unsupported filter syntax: '{proto}[...]'", col)

    def relation(self, r: P.Relation) -> tuple:
        c0, v0 = self.arith(r.left)
        c1, v1 = self.arith(r.right)
        op = r.op
        if v0[0] == "k" and v1[0] == "k":
            x, y = v0[1], v1[1]
            res = {"==": x == y, "!=": x != y, ">": x > y, ">=": x >= y, "<": x < y,
                   "<=": x <= y}[op]
            test = T if res else F
        elif op == "!=":
            test = b_not(("cmp", "==", v0, v1))
        else:
            test = ("cmp", op, v0, v1)
        return b_and(b_and(c0, c1), test)

    # --- tree walk -------------------------------------------------------------------------------
    def node(self, n: P.Node) -> tuple:
        if isinstance(n, P.And):
            a = self.node(n.left)
            return b_and(a, self.node(n.right))
        if isinstance(n, P.Or):
            a = self.node(n.left)
            return b_or(a, self.node(n.right))
        if isinstance(n, P.Not):
            return b_not(self.node(n.expr))
        if isinstance(n, P.Prim):
            return self.prim(n)
        if isinstance(n, P.Abbrev):
            return self.proto_abbrev(n.proto, n.column)
        if isinstance(n, P.Cast):
            return self.cast(n)
        if isinstance(n, P.LenCmp):
            return ("cmp", n.op, ("len",), k(n.value))
        if isinstance(n, P.Vlan):
            return self.vlan(n)
        if isinstance(n, P.Relation):
            return self.relation(n)
        if isinstance(n, P.Empty):
            return T
        raise AssertionError(n)


def _offset(v: tuple, base: int) -> tuple:
    if v[0] == "k":
        return ("k", (v[1] + base) & M32)
    return ("off", v, base)


def fold_neg(v: tuple) -> tuple:
    if v[0] == "k":
        return k(-v[1])
    return ("neg", v)


_CONST_OPS = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
    "/": lambda x, y: x // y if y else 0, "%": lambda x, y: x % y if y else 0,
    "&": lambda x, y: x & y, "|": lambda x, y: x | y, "^": lambda x, y: x ^ y,
    "<<": lambda x, y: x << y, ">>": lambda x, y: x >> y,
}


def fold_bin(op: str, a: tuple, b: tuple, c: Compiler, column: int) -> tuple:
    """A binary operation, folded the way libpcap's gencode and optimizer fold it."""
    op = {"LSH": "<<", "RSH": ">>"}.get(op, op)
    if b[0] == "k":
        y = b[1]
        if op == "/" and y == 0:
            raise c.err("division by zero", column)
        if op == "%" and y == 0:
            raise c.err("modulus by zero", column)
        if op in ("<<", ">>") and y > 31:
            raise c.err("shift by more than 31 bits", column)
        if a[0] == "k":
            x = a[1]
            # only the operation asked for: evaluating them all computed ``x << y`` too, a
            # 512 MB integer for ``1 | 0xffffffff`` (the shift itself was refused above)
            return k(_CONST_OPS[op](x, y))
        if y == 0:
            if op in ("+", "-", "<<", ">>", "|", "^"):
                return a
            if op in ("*", "&"):
                return k(0)
        return ("bin", op, a, b)
    if a[0] == "k" and a[1] == 0:
        if op in ("+", "|", "^"):
            return b
        if op in ("*", "/", "%", "&", "<<", ">>"):
            return k(0)
    return ("bin", op, a, b)


def _atoin(s: str, c: Compiler, column: int) -> tuple[int, int]:
    """libpcap's __pcap_atoin: a dotted (possibly short) IPv4 address -> (value, bits)."""
    v, n = 0, 0
    for part in s.split("."):
        x = int(part, 16) if part[:2] in ("0x", "0X") else \
            (int(part, 8) if len(part) > 1 and part[0] == "0" else int(part))
        if x > 255:
            raise c.err(f"invalid IPv4 address '{s}'", column)
        v = (v << 8) | x
        n += 8
    return v, n


def _parse_mac(s: str, c: Compiler, column: int) -> bytes:
    if ":" in s or "-" in s or s.count(".") == 5:
        parts = re.split(r"[:.\-]", s)
        return bytes(int(p, 16) for p in parts)
    hexs = s.replace(".", "")
    if len(hexs) != 12:
        raise c.err(f"bad ethernet address '{s}'", column)
    return bytes.fromhex(hexs)


def compile_to_ir(expr: str, netmask: int = 0) -> tuple:
    """Parse and compile ``expr`` into the boolean IR (see the module docstring)."""
    tree = P.parse(expr)
    return Compiler(expr, netmask).node(tree)


# --- IR -> Python ----------------------------------------------------------------------------------
class _Gen:
    """IR -> Python source. A 2- or 4-byte load at a constant offset (and the IPv4 header length)
    is computed once and kept in a local (``:=``) for the code that runs after it on every path:
    the right side of an ``and``/``or`` may reuse what its left side always computes."""

    def __init__(self, reused: Optional[set] = None, helpers: Optional[list[str]] = None) -> None:
        self.n = 0
        self.reused = reused  # values worth a local (None: first pass, finding them)
        self.hits: set = set()
        #: When a list: a run of more than CHUNK operands is cut into helper functions
        #: ``_hN(d, w)`` (their source appended here), each compiled on its own, so that no single
        #: ``compile`` sees a huge expression (CPython needs ~200 bytes per source byte for it).
        self.helpers = helpers

    def val(self, v: tuple, av: dict) -> str:
        t = v[0]
        if t == "k":
            return str(v[1])
        if t == "len":
            return "w"
        cacheable = t == "ihl" or (t == "ld" and v[1] > 1 and v[2][0] == "k")
        if cacheable and self.reused is not None:
            cacheable = v in self.reused
        if cacheable and v in av:
            self.hits.add(v)
            return av[v]
        code = self._val(v, av)
        if cacheable:
            self.n += 1
            name = f"_v{self.n}"
            av[v] = name
            return f"({name}:={code})"
        return code

    def _val(self, v: tuple, av: dict) -> str:
        t = v[0]
        if t == "ihl":
            return f"((d[{v[1]}]&15)<<2)"
        if t == "off":
            return f"({self.val(v[1], av)}+{v[2]})"
        if t == "neg":
            return f"(-{self.val(v[1], av)}&0xffffffff)"
        if t == "ld":
            size, off = v[1], v[2]
            if off[0] == "k":
                o = off[1]
                if size == 1:
                    return f"d[{o}]"
                if size == 2:
                    return f"(d[{o}]<<8|d[{o + 1}])"
                return f"_u32(d,{o})[0]"
            # brackets and call parentheses delimit the offset: no parentheses of its own (each
            # level of nesting counts against Python's limit of 200)
            o = f"{self.val(off[1], av)}+{off[2]}" if off[0] == "off" else self.val(off, av)
            if size == 1:
                return f"d[{o}]"
            if size == 2:
                return f"_u16(d,{o})[0]"
            return f"_u32(d,{o})[0]"
        if t == "bin":
            op = v[1]
            a = self.val(v[2], av)
            b = self.val(v[3], av)
            # ``a+b&M`` is ``(a+b)&M`` in Python (``&`` binds looser): one pair of parentheses
            if op in ("+", "-", "*"):
                return f"({a}{op}{b}&0xffffffff)"
            if op == "/":
                return f"({a}//{b})"
            if op == "<<":
                if v[3][0] == "k":
                    return f"({a}<<{b}&0xffffffff)"
                return f"_lsh({a},{b})"
            return f"({a}{op}{b})"
        raise AssertionError(v)

    def _helper(self, code: str) -> str:
        assert self.helpers is not None
        name = f"_h{len(self.helpers)}"
        self.helpers.append(f"def {name}(d, w):\n    return ({code})\n")
        return f"{name}(d,w)"

    def bool(self, ir: tuple, av: dict) -> str:
        """Code for ``ir``; ``av`` gains what is computed on every path through it."""
        t = ir[0]
        if t == "T":
            return "True"
        if t == "F":
            return "False"
        if t in ("and", "or"):
            # A run of one operator is one flat Python ``a or b or c``: no nesting however long
            # (Python refuses more than 200 nested parentheses). Each operand after the first
            # runs only when all before it ran, so it may reuse what they always compute; what
            # follows the whole run may reuse only what the first always computes.
            ops = _run(ir)
            if self.helpers is not None and len(ops) > CHUNK:
                # each helper starts afresh: locals computed by one are not visible to another
                parts = []
                for i in range(0, len(ops), CHUNK):
                    fresh: dict = {}
                    parts.append(self._helper(f" {t} ".join(self.bool(x, fresh) for x in ops[i:i + CHUNK])))
                return "(" + f" {t} ".join(parts) + ")"
            parts = [self.bool(ops[0], av)]
            later = dict(av)
            parts.extend(self.bool(x, later) for x in ops[1:])
            return "(" + f" {t} ".join(parts) + ")"
        if t == "not":
            return f"(not {self.bool(ir[1], av)})"
        if t == "cmp":
            a = self.val(ir[2], av)
            b = self.val(ir[3], av)
            return f"({a}{ir[1]}{b})"
        if t == "jset":
            return f"({self.val(ir[1], av)}&{ir[2]})"
        raise AssertionError(ir)


def _run(ir: tuple) -> list:
    """The operands, in order, of the run of ``ir[0]`` (``and`` or ``or``) that ``ir`` heads."""
    t = ir[0]
    out: list = []
    stack = [ir]
    while stack:
        x = stack.pop()
        if x[0] == t:
            stack.append(x[2])
            stack.append(x[1])
        else:
            out.append(x)
    return out


def ir_to_python(ir: tuple, helpers: Optional[list[str]] = None) -> str:
    """A Python expression over ``d`` (frame bytes) and ``w`` (wire length) for the IR. With a
    ``helpers`` list, long runs of ``and``/``or`` call helper functions whose definitions (each a
    separate piece of source, to be compiled on its own) are appended to it."""
    first = _Gen()
    first.bool(ir, {})
    return _Gen(first.hits, helpers).bool(ir, {})


#: The IR -> Python generator, for the switch's condition language and classifier, which extend it.
CodeGen = _Gen
