"""``NAT``: source NAT (NAPT) with port allocation, both directions rewritten, checksums fixed.

Config::

    external: 198.19.0.1          # the address inside hosts are hidden behind
    internal: [198.18.0.0/15]     # sources to translate (default: any source but `external`)
    ports: [20000, 59999]         # external ports to allocate from (per protocol)

An outbound TCP/UDP packet from an internal host gets source ``external:port``, where ``port``
is allocated for its ``(proto, src, sport)`` and kept while the mapping is used; inbound packets
to ``external:port`` are rewritten back to the internal host. ICMP echo is translated by its
identifier the same way. IPv4 and IPv6 (a v6 external address for v6 traffic: ``external6``).
Mappings expire after ``flow_timeout`` idle seconds (the port returns to the pool), and TCP
mappings end early on RST. When the pool is empty new connections are dropped (``no free port``).
Inbound packets with no mapping are dropped (``no mapping``) unless ``pass_unmatched: true``.

A mapping lives in the instance that made it: run one instance per external address (or give
each instance its own port range), since a reply is addressed to the external port, not to the
original flow the load balancer saw.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

from e2actors.errors import ConfigError
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.checksum import internet_checksum, l4_checksum, rewrite
from e2actors.packet.packet import Packet

__all__ = ["NAT"]


def _address(key: str, v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        raise ConfigError("NAT", key, f"an IP address, not {v!r}") from None


@dataclass
class NATConfig:
    """The NAT's config (checked at plan time)."""

    external: str | None = None
    external6: str | None = None
    internal: str | list[str] | None = None
    ports: list[int] = field(default_factory=lambda: [20000, 59999])
    pass_unmatched: bool = False


class NAT(Pipelet):
    config_schema = NATConfig
    ports = ("out",)
    affinity = "flow"
    cost_pps = 150_000
    flow_timeout = 120.0

    setup_is_pure = True  # only reads its config: the planner checks it by running setup

    async def setup(self, config: dict[str, Any]) -> None:
        if "external" not in config and "external6" not in config:
            raise ConfigError("NAT", "external", "missing (and no 'external6'): the address to translate to")
        self.ext4 = _address("external", config["external"]).packed if "external" in config else None
        self.ext6 = _address("external6", config["external6"]).packed if "external6" in config else None
        nets = config.get("internal")
        try:
            self.internal = [ipaddress.ip_network(n, strict=False)
                             for n in ([nets] if isinstance(nets, str) else nets)] if nets else None
        except (TypeError, ValueError) as exc:
            raise ConfigError("NAT", "internal", f"networks such as 10.0.0.0/8: {exc}") from None
        try:
            lo, hi = (int(x) for x in config.get("ports", (20000, 59999)))
        except (TypeError, ValueError):
            raise ConfigError("NAT", "ports", f"a range [LOW, HIGH], not {config['ports']!r}") from None
        if not (0 < lo <= hi <= 65535):
            raise ConfigError("NAT", "ports", f"a range within 1-65535, not {lo}-{hi}")
        self.port_lo, self.port_hi = int(lo), int(hi)
        self.pass_unmatched = bool(config.get("pass_unmatched", False))
        # (proto, ext_port) -> (src, sport); the forward map is self.flows: (proto, src, sport) -> ext_port
        self.reverse: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._next: dict[int, int] = {}

    def _is_internal(self, addr: bytes) -> bool:
        if addr in (self.ext4, self.ext6):
            return False
        if self.internal is None:
            return True
        ip = ipaddress.ip_address(addr)
        return any(ip in n for n in self.internal)

    def _alloc(self, proto: int) -> int | None:
        span = self.port_hi - self.port_lo + 1
        start = self._next.get(proto, self.port_lo)
        for i in range(span):
            p = self.port_lo + (start - self.port_lo + i) % span
            if (proto, p) not in self.reverse:
                self._next[proto] = p + 1 if p < self.port_hi else self.port_lo
                return p
        return None

    async def process(self, batch: Batch) -> None:
        for pkt in batch.packets:
            out = self._translate(pkt)
            if out is not None:
                self.emit(out)

    def _translate(self, pkt: Packet) -> Packet | None:
        proto = pkt.proto
        if proto not in (6, 17, 1, 58) or pkt.frag or pkt.l4_offset < 0:
            self.counters["passed untranslated"] += 1
            return pkt
        ext = self.ext4 if len(pkt.src) == 4 else self.ext6
        if ext is None:
            return pkt
        icmp_echo = proto in (1, 58)
        if icmp_echo:
            t = pkt.icmp_type
            if t not in (8, 0, 128, 129) or pkt.l4_offset + 8 > len(pkt.data):
                return pkt
            ident = struct.unpack_from("!H", pkt.data, pkt.l4_offset + 4)[0]
            outbound = t in (8, 128)
            sport = dport = ident
        else:
            sport, dport = pkt.sport, pkt.dport
            outbound = pkt.dst != ext
        now = self.now
        if outbound and pkt.dst != ext and self._is_internal(pkt.src):
            key = (proto, pkt.src, sport)
            ext_port = self.flows.touch(key, now)
            if ext_port is None:
                ext_port = self._alloc(proto)
                if ext_port is None:
                    self.drop(pkt, "no free port")
                    return None
                for (k, old) in self.flows.set(key, ext_port, now):
                    self._release(k, old)
                self.reverse[(proto, ext_port)] = (pkt.src, sport)
                self.counters["mappings"] += 1
            if proto == 6 and pkt.tcp_flags & 0x04:
                self._end(key)
            self.counters["outbound"] += 1
            return self._rewrite(pkt, src=ext, sport=ext_port, icmp=icmp_echo)
        if pkt.dst == ext:
            back = self.reverse.get((proto, dport))
            if back is None:
                if self.pass_unmatched:
                    return pkt
                self.drop(pkt, "no mapping")
                return None
            src, port = back
            self.flows.touch((proto, src, port), now)
            if proto == 6 and pkt.tcp_flags & 0x04:
                self._end((proto, src, port))
            self.counters["inbound"] += 1
            return self._rewrite(pkt, dst=src, dport=port, icmp=icmp_echo)
        return pkt

    def _rewrite(self, pkt: Packet, src: bytes | None = None, dst: bytes | None = None,
                 sport: int | None = None, dport: int | None = None, icmp: bool = False) -> Packet:
        if not icmp:
            data = rewrite(pkt, src=src, dst=dst, sport=sport, dport=dport)
        else:
            # ICMP echo: addresses via rewrite(), then the identifier and the ICMP checksum here
            # (ICMPv4's covers the message only; ICMPv6's adds the pseudo-header).
            data = rewrite(pkt, src=src, dst=dst)
            buf = bytearray(data)
            l4 = pkt.l4_offset
            end = pkt.payload_offset + pkt.payload_len
            struct.pack_into("!HH", buf, l4 + 2, 0, sport if sport is not None else dport)  # type: ignore[arg-type]
            msg = bytes(buf[l4:end])
            if pkt.proto == 1:
                c = internet_checksum(msg)
            else:
                c = l4_checksum(src or pkt.src, dst or pkt.dst, 58, msg)
            struct.pack_into("!H", buf, l4 + 2, c)
            data = bytes(buf)
        out = Packet(data, pkt.ts, pkt.port, pkt.wirelen + len(data) - len(pkt.data), pkt.linktype, pkt.meta_if_any,
                     pkt.origin)
        return out

    def _end(self, key: tuple) -> None:
        port = self.flows.pop(key)
        if port is not None:
            self._release(key, port)

    def _release(self, key: tuple, port: int) -> None:
        self.reverse.pop((key[0], port), None)

    def on_flow_end(self, flow: Any, state: Any) -> None:
        self._release(flow, state)

    def export_state(self) -> dict[str, Any]:
        d = super().export_state()
        d["next"] = dict(self._next)
        return d

    def import_state(self, data: dict[str, Any]) -> None:
        super().import_state(data)
        for key, port in self.flows.items():
            self.reverse[(key[0], port)] = (key[1], key[2])
        self._next.update({int(k): int(v) for k, v in dict(data.get("next", {})).items()})
