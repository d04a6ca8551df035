"""Learning the host (HTTP Host or TLS SNI) of each flow, for ``domain`` conditions. Pure code.

The switch asks :meth:`HostTracker.lookup` for every packet of a flow whose route may depend on a
``domain`` test, in arrival order, and holds the flow while the answer is :data:`UNKNOWN`.

How a flow's host is decided (the same code as the HostFilter NF's, so both always agree):

- **TCP**: the packets go through the packet layer's
  :class:`~e2actors.packet.reassembly.Reassembler`, so the client's bytes are read in *sequence
  order*: a retransmitted segment's copy is dropped (first copy wins), a segment that arrives
  before an earlier one waits for it, and a hole is waited for until the switch's hold bound gives
  up (:meth:`HostTracker.give_up`) or ``gap_timeout`` passes (:meth:`HostTracker.expire`). The
  in-order bytes feed a :class:`~e2actors.packet.l7.HostSniffer`: the client is the first
  direction to deliver bytes; the answer is its HTTP Host or TLS SNI, or None (no host) when the
  bytes are not HTTP/1.x or TLS, carry no name, pass ``max_bytes`` undecided, lose bytes to a gap,
  or the connection ends first. Without the handshake (a flow joined mid-stream) the stream starts
  at the first data segment seen.
- **UDP**: the first datagram with a payload decides alone, with the same peek (HTTP and TLS do
  not run over plain UDP, so UDP flows get None at once and are never held for long).
- **Anything else** (ICMP, other protocols, IP fragments, non-IP frames) has no host: None at once.

Answers are kept (a bounded LRU with idle expiry) for the flow's life; a flow still being learnt
keeps at most ``max_bytes`` of out-of-order bytes and a sniffer buffer, and at most ``max_flows``
flows are learnt at once (past that the oldest gets None).
"""

from __future__ import annotations

import collections
from collections.abc import Hashable

from e2actors.packet.flowtable import FlowTable
from e2actors.packet.l7 import FOUND, HostSniffer, peek_host
from e2actors.packet.packet import Packet
from e2actors.packet.reassembly import Chunk, End, Event, Gap, Reassembler

__all__ = ["HostTracker", "UNKNOWN"]

UNKNOWN = object()  # the host is not known yet: hold the flow


class HostTracker:
    """``lookup(pkt, now) -> host | None | UNKNOWN`` (None: the flow has no host; it never will).

    ``learned`` counts hosts found, ``gave_up`` flows decided without one; ``reasons`` splits every
    decision by cause (``http``, ``tls``, ``no host``, ``bound``, ``gap``, ``end``, ``hold`` for
    :meth:`give_up`, ``evicted``). ``reassembler.stats`` has the TCP reassembly counters.
    """

    def __init__(self, max_bytes: int = 8192, flow_timeout: float = 120.0, max_flows: int = 200_000,
                 gap_timeout: float = 1.0, max_buffer: int = 16 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_flows = max_flows
        self.known: FlowTable[str | None] = FlowTable(flow_timeout, max_flows)
        # history=0: conflicting retransmissions are not looked for here (first copy wins anyway);
        # linger=0: a decided flow is forgotten, its later packets stop at `known`.
        self.reassembler = Reassembler(max_flow_buffer=max_bytes, max_total_buffer=max_buffer,
                                       gap_timeout=gap_timeout, idle_timeout=flow_timeout, history=0, linger=0)
        self._sniffers: collections.OrderedDict[Hashable, HostSniffer] = collections.OrderedDict()
        self.learned = 0
        self.gave_up = 0
        self.reasons: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        """Flows being learnt (no answer yet)."""
        return len(self._sniffers)

    def lookup(self, pkt: Packet, now: float) -> object:
        """The host of ``pkt``'s flow: a name, None (no host, ever), or :data:`UNKNOWN` (not yet)."""
        key = pkt.flow_key
        host = self.known.touch(key, now)
        if host is not None or key in self.known:
            return host
        proto = pkt.proto
        if proto == 6:
            if pkt.frag or pkt.reason is not None:
                return None
            events = self.reassembler.feed(pkt, now)
            if events:
                self._apply(events, now)
                if key in self.known:
                    return self.known.get(key)
            if key not in self._sniffers and self.reassembler.tracks(key):
                self._sniffer(key, now)  # counted (and bounded) from its first packet
            return UNKNOWN
        if proto == 17 and not pkt.frag and pkt.reason is None:
            if pkt.payload_len <= 0:
                return UNKNOWN
            state, host, how = peek_host(pkt.payload, self.max_bytes)
            return self._learn(key, host if state == FOUND else None, how or "no host", now)
        return None

    def give_up(self, pkt: Packet, now: float) -> None:
        """The hold bound was hit: the flow has no host as far as routing goes."""
        key = pkt.flow_key
        if key not in self.known:
            self._learn(key, None, "hold", now)

    def expire(self, now: float) -> None:
        """Timeouts: answers idle for ``flow_timeout`` are forgotten; TCP holes older than
        ``gap_timeout`` are given up on (the flow gets None unless its host was already read)."""
        for key, _ in self.known.expire(now):
            self._forget(key)
        events = self.reassembler.advance(now)
        if events:
            self._apply(events, now)

    # --- internals --------------------------------------------------------------------------------
    def _sniffer(self, key: Hashable, now: float) -> HostSniffer:
        sn = self._sniffers.get(key)
        if sn is None:
            sn = self._sniffers[key] = HostSniffer(self.max_bytes)
            while len(self._sniffers) > self.max_flows:  # bound the flows being learnt
                old = next(iter(self._sniffers))
                self._learn(old, None, "evicted", now)
        return sn

    def _apply(self, events: list[Event], now: float) -> None:
        """Feed reassembly events to their flows' sniffers; decide the flows they settle."""
        for ev in events:
            key = ev.flow
            if key in self.known:
                continue
            if type(ev) is Chunk:
                sn = self._sniffer(key, now)
                done = sn.data(ev.direction, ev.data)
            elif type(ev) is Gap:
                sn = self._sniffer(key, now)
                done = sn.gap(ev.direction)
            elif type(ev) is End:
                sn = self._sniffers.get(key) or HostSniffer(self.max_bytes)
                done = sn.end()
            else:  # pragma: no cover - the reassembler has no other events
                continue
            if done:
                self._learn(key, sn.host, sn.kind or sn.why, now)

    def _learn(self, key: Hashable, host: str | None, why: str, now: float) -> str | None:
        self._forget(key)
        self.known.set(key, host, now)
        self.reasons[why] += 1
        if host is not None:
            self.learned += 1
        else:
            self.gave_up += 1
        return host

    def _forget(self, key: Hashable) -> None:
        self._sniffers.pop(key, None)
        self.reassembler.forget(key)
