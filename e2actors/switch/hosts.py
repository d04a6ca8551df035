"""Learning the host (HTTP Host or TLS SNI) of each flow, for ``domain`` conditions. Pure code.

The client's first payload bytes are collected per flow (in arrival order, up to a bound) and
peeked at with :mod:`e2actors.packet.l7`; the answer is a host name, or "none" once the bytes
cannot be HTTP or TLS or the bound is hit. Learned answers stay (bounded LRU) for the flow's life.
"""

from __future__ import annotations

from collections.abc import Hashable

from e2actors.packet.flowtable import FlowTable
from e2actors.packet.l7 import FOUND, NO, parse_http_host, parse_tls_sni
from e2actors.packet.packet import Packet

__all__ = ["HostTracker", "UNKNOWN"]

UNKNOWN = object()  # the host is not known yet: hold the flow


class HostTracker:
    """``lookup(pkt) -> host | None | UNKNOWN`` (None: the flow has no host; it never will)."""

    def __init__(self, max_bytes: int = 8192, flow_timeout: float = 120.0, max_flows: int = 200_000) -> None:
        self.max_bytes = max_bytes
        self.known: FlowTable[str | None] = FlowTable(flow_timeout, max_flows)
        self._buf: dict[Hashable, bytearray] = {}
        self.learned = 0
        self.gave_up = 0

    def lookup(self, pkt: Packet, now: float) -> object:
        key = pkt.flow_key
        host = self.known.touch(key, now)
        if host is not None or key in self.known:
            return host
        if pkt.payload_len <= 0 or pkt.proto != 6 and pkt.proto != 17:
            return UNKNOWN
        buf = self._buf.get(key)
        if buf is None:
            buf = self._buf[key] = bytearray()
        buf += pkt.payload
        st_h, h = parse_http_host(bytes(buf))
        if st_h == FOUND:
            return self._learn(key, h, now)
        st_t, t = parse_tls_sni(bytes(buf))
        if st_t == FOUND:
            return self._learn(key, t, now)
        if (st_h == NO and st_t == NO) or len(buf) >= self.max_bytes:
            self.gave_up += 1
            return self._learn(key, None, now)
        return UNKNOWN

    def give_up(self, pkt: Packet, now: float) -> None:
        """The hold bound was hit: the flow has no host as far as routing goes."""
        key = pkt.flow_key
        if key not in self.known:
            self.gave_up += 1
            self._learn(key, None, now)

    def _learn(self, key: Hashable, host: str | None, now: float) -> str | None:
        self._buf.pop(key, None)
        self.known.set(key, host, now)
        if host is not None:
            self.learned += 1
        return host

    def expire(self, now: float) -> None:
        for key, _ in self.known.expire(now):
            self._buf.pop(key, None)
        if len(self._buf) > self.known.max_flows:  # bound the partial buffers too
            self._buf.clear()
