"""Packets inside a program, matched by their bytes when they come back. Pure code.

A program behind a virtual port sees frames, never e2actors' packets: their metadata and ingress
credit stay here. When the program sends a frame back byte for byte unchanged (a bridge, an
inline IPS, a filtering firewall), :meth:`InFlight.match` finds the packet that carried those
bytes (the oldest one, when several in flight carry the same bytes) so the original object, with
its metadata and credit, leaves the NF. A frame the program changed (a NAT, a router decrementing
the TTL, a proxy's new connection) matches nothing and leaves as a new packet without metadata;
the packet it came from stays here until :meth:`InFlight.expire` says it was not sent back.

One normalisation: the outer VLAN tag's TPID does not count. Linux takes the outer tag out of a
frame before a packet socket sees it, and a program that puts it back as it forwards (Suricata in
af-packet IPS mode) writes 802.1Q's 0x8100 where the frame had 802.1ad's 0x88a8 (or the old
0x9100): such a frame is still the packet that went in, and leaves with its original bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable

from e2actors.packet.packet import Packet

__all__ = ["InFlight", "frame_key"]

_QINQ = (b"\x88\xa8", b"\x91\x00")


def frame_key(data: bytes) -> bytes:
    """What identifies a frame coming back: its bytes, with an outer 802.1ad TPID read as 802.1Q."""
    if data[12:14] in _QINQ:
        return data[:12] + b"\x81\x00" + data[14:]
    return data


class InFlight:
    """Packets written and not yet seen back, in write order, keyed by frame bytes.

    Each packet is in a per-bytes queue (matched oldest first) and in one write-order queue whose
    front is what expires first; an entry matched earlier is skipped when it reaches the front
    (it is no longer the head of its bytes' queue: matching and writing keep the same order)."""

    __slots__ = ("_by_frame", "_fifo", "held")

    def __init__(self) -> None:
        self._by_frame: dict[Hashable, collections.deque[Packet]] = {}
        self._fifo: collections.deque[tuple[float, Hashable, Packet]] = collections.deque()
        #: Packets in flight.
        self.held = 0

    def __len__(self) -> int:
        return self.held

    def add(self, pkt: Packet, now: float) -> None:
        """``pkt`` was written into the program at ``now``."""
        key = frame_key(pkt.data)
        q = self._by_frame.get(key)
        if q is None:
            q = self._by_frame[key] = collections.deque()
        q.append(pkt)
        self._fifo.append((now, key, pkt))
        self.held += 1

    def match(self, data: bytes) -> Packet | None:
        """The oldest packet in flight that carried ``data`` (taken out), or None."""
        data = frame_key(data)
        q = self._by_frame.get(data)
        if q is None:
            return None
        pkt = q.popleft()
        if not q:
            del self._by_frame[data]
        self.held -= 1
        return pkt

    def waiting(self, pkt: Packet) -> bool:
        """``pkt`` is still in flight."""
        q = self._by_frame.get(frame_key(pkt.data))
        return q is not None and any(x is pkt for x in q)

    def expire(self, before: float) -> list[Packet]:
        """Take out and return the packets written before ``before`` and never seen back, oldest first."""
        fifo = self._fifo
        by = self._by_frame
        out: list[Packet] = []
        while fifo:
            t, key, pkt = fifo[0]
            q = by.get(key)
            if q is None or q[0] is not pkt:  # matched already
                fifo.popleft()
                continue
            if t >= before:
                break
            fifo.popleft()
            q.popleft()
            if not q:
                del by[key]
            self.held -= 1
            out.append(pkt)
        return out

    def take_all(self) -> list[Packet]:
        """Everything still in flight (the program stops), oldest first."""
        return self.expire(float("inf"))
