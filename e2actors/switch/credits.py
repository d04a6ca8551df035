"""Ingress credits: end-to-end backpressure from every consumer to the port that admitted a packet.
Pure code (no asyncio); the switch wraps it.

Every input port of a deployment is an *origin* with a number (the manager numbers them in the
switch tables) and a *window*: at most ``window`` packets it admitted may be in the deployment at
once, wherever they are — waiting in a switch for an instance, in an instance's queue or inside a
pipelet (a shaper's queue), held for their flow's stream verdicts, on a link to another server. A
packet carries its origin (:attr:`~e2actors.packet.packet.Packet.origin`); whoever finishes it (a
switch that sends it out of a port or drops it, an instance whose pipelet dropped or consumed it)
hands its credit back to the switch that holds the origin, directly when that is the same switch,
else in a :class:`~e2actors.switch.messages.Credit` message.

Why end-to-end and not hop by hop: the switches of a deployment send to each other both ways (a
packet goes to an instance on another server and comes back to leave), and hop-by-hop credits on
such cycles can deadlock; a window at the ingress cannot, and it bounds every queue on the way at
once: no queue ever holds more than the windows of the origins that feed it, so nothing in the
middle of a chain is dropped for lack of room. What the window does at the ingress depends on the
port: a replayed capture waits (the replay is paced by the slowest consumer on its path, and is
lossless); a live interface stops reading, and the kernel drops at its ring as a full NIC would
(counted as the port's ring overflow), before any work was spent on the packets.

Written-off credits (a consumer that stalled past a bound, a server lost with packets on it) are
written off provisionally: the origin gets its window back at once, and a credit that comes back
after all takes its packet out of ``written_off`` again, so ``written_off`` ends as the packets
that were really never finished.

Packets that stop holding credit on purpose: packets held for their flow's host (``domain``
conditions) give their credit back when held (else a window full of held flows could keep out the
very packets that carry their hosts); they are bounded by the switch's own hold limits instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from e2actors.packet.packet import Packet

__all__ = ["Credits", "DEFAULT_WINDOW", "INPUT_KINDS", "LIVE_WINDOW"]

#: Port kinds that take input (each one is an origin with a window).
INPUT_KINDS = frozenset(("pcap-in", "afpacket", "memory"))

#: Packets a replayed capture may have in the deployment at once.
DEFAULT_WINDOW = 8192
#: The same for a live interface: about a NIC ring's worth, so the ring overflows (not the switch)
#: when the deployment cannot keep up.
LIVE_WINDOW = 4096


class Credits:
    """The credit windows of one switch's input ports, and the credits it owes other switches.

    ``home``: origin -> the server whose switch holds it (from the table); origins held here have
    a window. ``finish(pkts)`` when packets are done; ``take_owed()`` for what goes back to others.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.home: dict[int, str] = {}
        self.window: dict[int, int] = {}
        self.inflight: dict[int, int] = {}
        self.admitted: dict[int, int] = {}
        self.owed: dict[str, dict[int, int]] = {}
        #: Credits given up after a consumer stalled too long or a server was lost (packets
        #: presumed lost; less those that came back after all).
        self.written_off = 0
        self._written_off: dict[int, int] = {}  # origin -> its part of written_off
        #: Bumped whenever room may have appeared at one of our origins (the switch wakes ports).
        self.returned = 0

    def configure(self, home: dict[int, str], windows: dict[int, int]) -> None:
        """A new table: where each origin lives, and our own origins' windows."""
        self.home = dict(home)
        self.window = dict(windows)
        for o in windows:
            self.inflight.setdefault(o, 0)
            self.admitted.setdefault(o, 0)

    # --- our origins ------------------------------------------------------------------------------
    def room(self, origin: int) -> int:
        """Packets ``origin`` may still admit now (0: wait)."""
        w = self.window.get(origin)
        if w is None:
            return 1 << 30
        return max(0, w - self.inflight.get(origin, 0))

    def admit(self, origin: int, n: int) -> None:
        self.inflight[origin] = self.inflight.get(origin, 0) + n
        self.admitted[origin] = self.admitted.get(origin, 0) + n

    def give_back(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Credits that come back for our origins (from another switch, or counted here);
        credits of origins that are not ours are ignored (never sent on again)."""
        for o, n in pairs:
            self._return(o, n)

    def _return(self, o: int, n: int) -> bool:
        """``n`` credits back to our origin ``o``; False when ``o`` is not one of ours."""
        inflight = self.inflight
        if o not in inflight:
            return False
        inflight[o] -= n
        self.returned += 1
        if inflight[o] < 0:
            self._came_back(o)
        return True

    def write_off(self, origin: int) -> int:
        """Give up the credits of ``origin`` now (its consumers stalled past the bound, or a server
        holding some of its packets was lost); returns how many. Provisional: credits that come
        back later are taken out of :attr:`written_off` again."""
        n = max(0, self.inflight.get(origin, 0))
        self.inflight[origin] = 0
        self.written_off += n
        self._written_off[origin] = self._written_off.get(origin, 0) + n
        self.returned += 1
        return n

    def _came_back(self, origin: int) -> None:
        """Credits came back below zero in flight: they were written off, and were not lost."""
        back = min(-self.inflight[origin], self._written_off.get(origin, 0))
        if back > 0:
            self.inflight[origin] += back
            self._written_off[origin] -= back
            self.written_off -= back

    @property
    def in_flight(self) -> int:
        """Packets our origins admitted that are not finished yet."""
        return sum(max(0, v) for v in self.inflight.values())

    # --- finishing --------------------------------------------------------------------------------
    def finish(self, pkts: list[Packet]) -> None:
        """``pkts`` are done (sent out, dropped): their credits go home."""
        if not pkts:
            return
        o = pkts[0].origin
        if len(pkts) == 1 or pkts[-1].origin == o and all(p.origin == o for p in pkts):
            if o:
                self.finish_counts(((o, len(pkts)),))
            return
        counts: dict[int, int] = {}
        for p in pkts:
            o = p.origin
            if o:
                counts[o] = counts.get(o, 0) + 1
        self.finish_counts(counts.items())

    def finish_counts(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Packets finished here, counted per origin: credit back to our own origins, owed to the
        home switch of the others."""
        for o, n in pairs:
            if self._return(o, n):
                continue
            home = self.home.get(o)
            if home is None or home == self.server:
                continue  # an origin no table knows (a removed port): nothing waits for it
            d = self.owed.get(home)
            if d is None:
                d = self.owed[home] = {}
            d[o] = d.get(o, 0) + n

    def take_owed(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """server -> ``(origin, packets)`` to send back, and forget them."""
        if not self.owed:
            return {}
        out = {s: tuple(d.items()) for s, d in self.owed.items() if d}
        self.owed = {}
        return out

    def stats(self) -> dict[str, dict[int, int] | int]:
        return {"window": dict(self.window), "in_flight": dict(self.inflight), "admitted": dict(self.admitted),
                "written_off": self.written_off}
