"""TCP stream reassembly: per-flow, per-direction, bounded, with a record of which packets carried
which bytes. Pure code (no asyncio, no sockets); the switch and the test harness reuse it.

:class:`Reassembler` takes TCP packets in arrival order (``feed(pkt, now)``) and the passing of time
(``advance(now)``) and returns events:

- :class:`Chunk` ``(flow, direction, data, carriers)``: bytes that just became in order, and the
  packets whose *new* bytes are in them (each packet's new bytes land in exactly one chunk);
- :class:`Gap` ``(flow, direction, missing, carriers)``: ``missing`` bytes were given up on; the
  stream resumes after them (``carriers``: the packets whose bytes follow in the next chunk);
- :class:`End` ``(flow, reason)``: ``"fin"`` (FIN both ways, all bytes before each FIN seen),
  ``"rst"``, ``"idle"`` or ``"flush"``. Everything still buffered is delivered (with gaps) first.

``flow`` is the symmetric :attr:`Packet.flow_key`; ``direction`` is :attr:`Packet.direction`.

Policies (what a monitor has to choose, since it cannot see what the receiver accepted):

- **Overlaps** (``overlap``). When segments overlap (retransmissions, overlapping out-of-order
  segments) with *different* bytes, a receiver keeps one copy; which one depends on its TCP stack
  (Novak and Sturges, "Target-Based TCP Stream Reassembly", 2007). For bytes still buffered (waiting
  behind a hole) the policy decides: ``"first"`` (the default) keeps the bytes seen first;
  ``"last"`` takes the latest copy; ``"bsd"`` takes the new copy where the new segment starts
  before the segment that supplied the buffered bytes, else keeps them (Suricata 7 gave this result
  under each of its host-os policies in our tests: tests/test_ids_suricata.py); ``"linux"`` is
  ``"bsd"`` plus: a new segment starting at the same sequence number and ending later wins. Bytes
  already *delivered* cannot be taken back: a later different copy of them is ignored under every
  policy. A replacing segment's bytes stay carried by the packet that first carried those
  sequence numbers. Differing bytes are counted in ``stats["overlap_conflicts"]`` (a sign of an
  evasion attempt or a broken stack), replaced ones in ``stats["overlap_replaced"]``. Delivered
  bytes are compared against a short history (``history`` bytes per direction, 0 disables).
- **Start of stream.** With a SYN seen, data starts at ISN + 1. Joining mid-stream (no SYN), the
  stream starts at the first data segment (or FIN) seen in that direction; anything before it is
  treated as old (a retransmission).
- **Gaps.** A direction whose stream made no progress for ``gap_timeout`` seconds while
  out-of-order bytes (or a FIN) wait beyond a hole skips the hole: a :class:`Gap`, then the bytes
  after it. The timer restarts whenever the stream makes progress.
- **Bounds.** At most ``max_flow_buffer`` out-of-order bytes per flow direction and
  ``max_total_buffer`` over all flows. Past a bound the reassembler skips ahead at once (a Gap,
  counted in ``overflow_skips``) instead of dropping data or growing: the per-flow bound skips that
  direction's first hole; the global bound skips the hole that has waited longest, over all flows.
  Memory besides: the flow records, and at most ~2 x ``history`` delivered bytes per direction.
- **FIN** ends a direction at its sequence number; data beyond it is discarded (``after_fin``).
- **RST** ends the flow at once (buffered bytes are delivered with gaps) if its sequence number is
  plausible (at or ahead of the next expected byte, within ``max_flow_buffer`` or 64 KiB), else it is
  ignored (``rst_ignored``) so that a blind reset cannot blind the NF. Data in a RST is ignored.
- **After the end** a flow *lingers* for ``linger`` seconds: its late packets (the last ACK,
  retransmissions) produce no events and do not open a new flow, unless one is a SYN.
- **Sequence numbers** are 32-bit and compared modulo 2^32 (RFC 1982 style), so streams cross the
  wrap-around transparently; stream offsets are unbounded Python ints.
- Packets that are not TCP, are malformed, or are non-first fragments are ignored (``ignored``);
  a pure ACK (or RST) of an unknown flow creates no state.

Time is whatever the caller says (packet timestamps in a replay, the clock live); call
:meth:`Reassembler.advance` regularly (e.g. once per batch) for timeouts, and :meth:`flush` at the
end of the input.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Union

from e2actors.packet.packet import Packet

__all__ = ["Chunk", "End", "Event", "Gap", "OVERLAP_POLICIES", "Reassembler"]

#: Overlap policies for buffered bytes (see the module docstring).
OVERLAP_POLICIES = ("first", "last", "bsd", "linux")

_M32 = 0xFFFFFFFF
_HALF = 0x80000000
_SYN = 0x02
_FIN = 0x01
_RST = 0x04


class Chunk:
    """New in-order bytes of one direction and the packets whose new bytes they are."""

    __slots__ = ("flow", "direction", "data", "carriers")

    def __init__(self, flow: Hashable, direction: int, data: bytes, carriers: list[Packet]) -> None:
        self.flow = flow
        self.direction = direction
        self.data = data
        self.carriers = carriers

    def __repr__(self) -> str:
        return f"Chunk(dir={self.direction}, {len(self.data)}B, {len(self.carriers)} pkts)"


class Gap:
    """``missing`` bytes of one direction never came in time (or a bound forced a skip)."""

    __slots__ = ("flow", "direction", "missing", "carriers")

    def __init__(self, flow: Hashable, direction: int, missing: int, carriers: list[Packet]) -> None:
        self.flow = flow
        self.direction = direction
        self.missing = missing
        self.carriers = carriers

    def __repr__(self) -> str:
        return f"Gap(dir={self.direction}, missing={self.missing})"


class End:
    """The flow is over: ``reason`` is ``fin``, ``rst``, ``idle`` or ``flush``."""

    __slots__ = ("flow", "reason")

    def __init__(self, flow: Hashable, reason: str) -> None:
        self.flow = flow
        self.reason = reason

    def __repr__(self) -> str:
        return f"End({self.reason})"


Event = Union[Chunk, Gap, End]


class _Dir:
    """One direction of a flow. Offsets count stream bytes from the first one (``base`` is the
    sequence number of offset 0), so they never wrap; only ``seq -> offset`` is modular."""

    __slots__ = ("fl", "d", "started", "base", "off", "pending", "pbytes", "fin", "done", "gap_since",
                 "hist", "hbytes")

    def __init__(self, fl: _Flow, d: int) -> None:
        self.fl = fl
        self.d = d
        self.started = False
        self.base = 0  # sequence number of stream offset 0
        self.off = 0  # offset of the next byte expected (everything before is delivered or skipped)
        # Out-of-order pieces [start, end, data, packet, (segment start, end)], sorted, never
        # overlapping, all > off; the segment is the one that supplied the piece (overlap policies).
        self.pending: list[list] = []
        self.pbytes = 0
        self.fin = -1  # stream offset of the FIN, -1 until one is seen
        self.done = False  # all bytes up to the FIN delivered
        self.gap_since = 0.0
        self.hist: deque | None = None  # (start, data) of recently delivered bytes, for conflicts
        self.hbytes = 0


class _Flow:
    __slots__ = ("key", "dirs", "last_seen", "closed")

    def __init__(self, key: Hashable, now: float) -> None:
        self.key = key
        self.dirs = (_Dir(self, 0), _Dir(self, 1))
        self.last_seen = now
        self.closed = False


def _diff(a: bytes, b: bytes) -> int:
    """How many positions of two equal-length byte strings differ (rare path: only on conflicts)."""
    if a == b:
        return 0
    return sum(x != y for x, y in zip(a, b))


class Reassembler:
    """Per-flow, per-direction TCP reassembly (see the module docstring for the policies).

    ``feed(pkt, now)`` and ``advance(now)`` return lists of :class:`Chunk`, :class:`Gap` and
    :class:`End` events in the order they happened. After each :meth:`feed`, :attr:`last_key` is the
    packet's flow key (None if ignored) and :attr:`last_held` tells whether some of its new bytes
    wait out of order (it will be a carrier of a later chunk). ``stats`` holds the counters.
    """

    __slots__ = ("max_flow_buffer", "max_total_buffer", "gap_timeout", "idle_timeout", "history", "linger",
                 "overlap", "stats", "total", "last_key", "last_held", "_flows", "_closed", "_waiting")

    def __init__(
        self,
        max_flow_buffer: int = 256 * 1024,
        max_total_buffer: int = 64 * 1024 * 1024,
        gap_timeout: float = 1.0,
        idle_timeout: float = 60.0,
        *,
        history: int = 4096,
        linger: float = 5.0,
        overlap: str = "first",
    ) -> None:
        if max_flow_buffer < 0 or max_total_buffer < 0 or history < 0:
            raise ValueError("buffer bounds and history must be >= 0")
        if gap_timeout <= 0 or idle_timeout <= 0 or linger < 0:
            raise ValueError("gap_timeout and idle_timeout must be > 0, linger >= 0")
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {overlap!r}")
        self.overlap = overlap
        self.max_flow_buffer = max_flow_buffer
        self.max_total_buffer = max_total_buffer
        self.gap_timeout = gap_timeout
        self.idle_timeout = idle_timeout
        self.history = history
        self.linger = linger
        self.stats: dict[str, int] = dict.fromkeys(
            ("segments", "bytes", "delivered", "out_of_order", "retransmitted", "overlap_bytes",
             "overlap_conflicts", "gaps", "gap_bytes", "overflow_skips", "flows", "ends_fin", "ends_rst",
             "ends_idle", "ends_flush", "after_fin", "rst_ignored", "late", "ignored", "overlap_replaced"), 0)
        self.total = 0  # out-of-order bytes buffered over all flows
        self.last_key: Hashable | None = None
        self.last_held = False
        self._flows: OrderedDict[Hashable, _Flow] = OrderedDict()  # least recently seen first
        self._closed: OrderedDict[Hashable, float] = OrderedDict()  # lingering ended flows -> end time
        # Directions waiting beyond a hole, the longest-waiting first (gap timer and global bound).
        self._waiting: OrderedDict[_Dir, None] = OrderedDict()

    # --- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of live (not ended) flows."""
        return len(self._flows)

    def tracks(self, flow: Hashable) -> bool:
        """True while ``flow`` is live (it will get an :class:`End`)."""
        return flow in self._flows

    def buffered(self, flow: Hashable, direction: int) -> int:
        """Out-of-order bytes buffered for one direction of a live flow (0 if unknown)."""
        fl = self._flows.get(flow)
        return fl.dirs[direction].pbytes if fl is not None else 0

    def forget(self, flow: Hashable) -> bool:
        """Drop a live flow at once, with no events and its buffered bytes discarded (for a user
        that has seen all it needs of it). Its next packet starts a new flow. False if not live."""
        fl = self._flows.pop(flow, None)
        if fl is None:
            return False
        for dr in fl.dirs:
            self.total -= dr.pbytes
            dr.pbytes = 0
            dr.pending = []
            self._waiting.pop(dr, None)
        fl.closed = True
        return True

    # --- input -----------------------------------------------------------------------------------
    def feed(self, pkt: Packet, now: float | None = None) -> list[Event]:
        """Take one packet (in arrival order); ``now`` defaults to ``pkt.ts``."""
        if now is None:
            now = pkt.ts
        self.last_held = False
        if pkt.proto != 6 or pkt.reason is not None or pkt.l4_offset < 0:
            self.last_key = None
            self.stats["ignored"] += 1
            return []
        key = pkt.flow_key
        self.last_key = key
        st = self.stats
        st["segments"] += 1
        flags = pkt.tcp_flags
        plen = pkt.payload_len
        if plen:
            st["bytes"] += plen
        fl = self._flows.get(key)
        if fl is None:
            if key in self._closed:
                if not flags & _SYN:
                    st["late"] += 1  # the last ACK, a retransmission after the end: no new flow
                    return []
                del self._closed[key]
            elif flags & _RST or not (plen or flags & (_SYN | _FIN)):
                return []  # a stray ACK or RST: nothing to reassemble, no state to keep
            fl = _Flow(key, now)
            self._flows[key] = fl
            st["flows"] += 1
        else:
            fl.last_seen = now
            self._flows.move_to_end(key)
            if not (plen or flags & 0x07):
                return []  # a pure ACK (most packets): only keeps the flow alive
        events: list[Event] = []
        dr = fl.dirs[pkt.direction]
        seq = pkt.tcp_seq
        if flags & _RST:
            delta = ((seq - dr.base - dr.off + _HALF) & _M32) - _HALF
            if not dr.started or 0 <= delta <= max(self.max_flow_buffer, 0xFFFF):
                self._finish(fl, "rst", now, events)
            else:
                st["rst_ignored"] += 1
            return events
        if flags & _SYN:
            seq = (seq + 1) & _M32  # the SYN takes one sequence number; data starts after it
            if not dr.started:
                dr.started = True
                dr.base = seq
            elif seq != dr.base and dr.off == 0 and not dr.pending:
                dr.base = seq  # a new ISN before any byte: the peer started over
        if not dr.started:
            if not (plen or flags & _FIN):
                return events
            dr.started = True  # joining mid-stream: the stream starts here
            dr.base = seq
        if plen:
            self._data(dr, seq, pkt, plen, now, events)
            if fl.closed:
                return events
        if flags & _FIN and dr.fin < 0:
            f = dr.off + ((seq + plen - dr.base - dr.off + _HALF) & _M32) - _HALF
            if f >= dr.off:  # a FIN behind delivered bytes is bogus
                dr.fin = f
                if f > dr.off and not dr.pending:
                    dr.gap_since = now  # a hole before the FIN: the gap timer runs
                    self._waiting[dr] = None
        if dr.fin >= 0:
            self._check_done(dr, now, events)
        return events

    def _data(self, dr: _Dir, seq: int, pkt: Packet, plen: int, now: float, events: list[Event]) -> None:
        """Place the payload of ``pkt`` (starting at ``seq``) into the stream of ``dr``."""
        st = self.stats
        off = dr.off
        start = off + ((seq - dr.base - off + _HALF) & _M32) - _HALF
        end = start + plen
        if end <= off:  # entirely old: a retransmission of delivered (or skipped) bytes
            st["retransmitted"] += 1
            st["overlap_bytes"] += plen
            if dr.hist:
                self._check_history(dr, start, pkt.payload)
            return
        data = pkt.payload
        seg = (start, end)  # the segment as sent (overlap policies compare segments)
        fin = dr.fin
        if fin >= 0 and end > fin:
            if start >= fin:
                st["after_fin"] += 1
                return
            data = data[: fin - start]
            end = fin
        if start < off:  # partly old: keep only the new tail (first copy wins)
            st["retransmitted"] += 1
            st["overlap_bytes"] += off - start
            if dr.hist:
                self._check_history(dr, start, data[: off - start])
            data = data[off - start :]
            start = off
        if start == off and not dr.pending:
            # The common case: in order, nothing buffered. No copies, one event.
            dr.off = end
            st["delivered"] += end - start
            events.append(Chunk(dr.fl.key, dr.d, data, [pkt]))
            if self.history:
                self._remember(dr, start, data)
            return
        self._insert(dr, start, end, data, pkt, now, events, seg)

    def _insert(self, dr: _Dir, start: int, end: int, data: bytes, pkt: Packet, now: float,
                events: list[Event], seg: tuple[int, int] | None = None) -> None:
        """Buffer the parts of [start, end) not already buffered (first copy wins), deliver what
        became in order, and enforce the bounds."""
        st = self.stats
        p = dr.pending
        if start > dr.off:
            st["out_of_order"] += 1
        # First piece that may overlap: the last one starting at or before `start`, if it reaches it.
        i = bisect.bisect_right(p, start, key=_start) - 1
        if i < 0 or p[i][1] <= start:
            i += 1
        new: list[list] = []
        cur = start
        overlap = 0
        n = len(p)
        if seg is None:
            seg = (start, end)
        policy = self.overlap
        while i < n and p[i][0] < end:
            piece = p[i]
            ps, pe, pd = piece[0], piece[1], piece[2]
            if ps > cur:
                new.append([cur, ps, data[cur - start : ps - start], pkt, seg])
            a = max(cur, ps)
            b = min(end, pe)
            if b > a:
                overlap += b - a
                nd = data[a - start : b - start]
                c = _diff(nd, pd[a - ps : b - ps])
                if c:
                    st["overlap_conflicts"] += c
                    if policy != "first":
                        o0, o1 = piece[4]
                        if (policy == "last" or seg[0] < o0
                                or (policy == "linux" and seg[0] == o0 and seg[1] > o1)):
                            # The new copy wins: same bytes counted, same carrier, new content.
                            piece[2] = pd[: a - ps] + nd + pd[b - ps :]
                            st["overlap_replaced"] += b - a
            cur = max(cur, pe)
            i += 1
        if cur < end:
            new.append([cur, end, data[cur - start :] if cur > start else data, pkt, seg])
        if overlap:
            st["retransmitted"] += 1
            st["overlap_bytes"] += overlap
        if not new:
            return
        was_empty = not p
        added = 0
        for piece in new:
            bisect.insort(p, piece, key=_start)
            added += piece[1] - piece[0]
        dr.pbytes += added
        self.total += added
        if was_empty:
            dr.gap_since = now
            self._waiting[dr] = None
        if p[0][0] == dr.off:
            self._run(dr, now, events)
        if dr.pbytes > self.max_flow_buffer:
            while dr.pbytes > self.max_flow_buffer:
                st["overflow_skips"] += 1
                self._skip(dr, now, events)
        if self.total > self.max_total_buffer:
            w = self._waiting
            while self.total > self.max_total_buffer and w:
                st["overflow_skips"] += 1
                self._skip(next(iter(w)), now, events)
        self.last_held = new[-1][1] > dr.off

    # --- delivery ---------------------------------------------------------------------------------
    def _run(self, dr: _Dir, now: float, events: list[Event]) -> Chunk:
        """Deliver the buffered pieces contiguous with ``dr.off`` as one chunk."""
        p = dr.pending
        cur = dr.off
        i = 0
        n = len(p)
        while i < n and p[i][0] == cur:
            cur = p[i][1]
            i += 1
        parts = p[:i]
        del p[:i]
        if i == 1:
            data = parts[0][2]
            carriers = [parts[0][3]]
        else:
            data = b"".join([x[2] for x in parts])
            carriers = list(dict.fromkeys([x[3] for x in parts]))  # a packet split around others: once
        nb = cur - dr.off
        dr.pbytes -= nb
        self.total -= nb
        start = dr.off
        dr.off = cur
        self.stats["delivered"] += nb
        ch = Chunk(dr.fl.key, dr.d, data, carriers)
        events.append(ch)
        if self.history:
            self._remember(dr, start, data)
        if p or 0 <= dr.off < dr.fin:
            dr.gap_since = now  # progress: the next hole gets a full timeout
            self._waiting[dr] = None
            self._waiting.move_to_end(dr)
        else:
            self._waiting.pop(dr, None)
        return ch

    def _skip(self, dr: _Dir, now: float, events: list[Event]) -> None:
        """Give up on the first hole of ``dr``: a Gap, then the bytes after it (if any)."""
        p = dr.pending
        target = p[0][0] if p else dr.fin
        missing = target - dr.off
        st = self.stats
        st["gaps"] += 1
        st["gap_bytes"] += missing
        dr.off = target
        if p:
            at = len(events)
            ch = self._run(dr, now, events)
            events.insert(at, Gap(dr.fl.key, dr.d, missing, ch.carriers))
        else:
            events.append(Gap(dr.fl.key, dr.d, missing, []))
            self._waiting.pop(dr, None)
        if dr.fin >= 0:
            self._check_done(dr, now, events)

    def _check_done(self, dr: _Dir, now: float, events: list[Event]) -> None:
        if not dr.done and dr.off >= dr.fin >= 0:
            dr.done = True
            self._waiting.pop(dr, None)
        fl = dr.fl
        if dr.done and fl.dirs[1 - dr.d].done and not fl.closed:
            self._finish(fl, "fin", now, events)

    def _finish(self, fl: _Flow, reason: str, now: float, events: list[Event]) -> None:
        """End ``fl``: deliver what is buffered (skipping holes), then End; the flow lingers."""
        fl.closed = True
        for dr in fl.dirs:
            while dr.pending or 0 <= dr.off < dr.fin:
                self._skip(dr, now, events)
            self._waiting.pop(dr, None)
            dr.hist = None
        events.append(End(fl.key, reason))
        self.stats["ends_" + reason] += 1
        del self._flows[fl.key]
        if self.linger > 0:
            self._closed[fl.key] = now
            self._closed.move_to_end(fl.key)

    # --- conflicts with delivered bytes -----------------------------------------------------------
    def _remember(self, dr: _Dir, start: int, data: bytes) -> None:
        """Keep references to the last ``history`` delivered bytes (no copy unless a chunk is
        larger than the history itself)."""
        h = dr.hist
        if h is None:
            h = dr.hist = deque()
        hist = self.history
        if len(data) > hist:
            start += len(data) - hist
            data = data[-hist:]
        h.append((start, data))
        hb = dr.hbytes + len(data)
        while hb - len(h[0][1]) >= hist:
            hb -= len(h.popleft()[1])
        dr.hbytes = hb

    def _check_history(self, dr: _Dir, start: int, data: bytes) -> None:
        end = start + len(data)
        c = 0
        for hs, hd in dr.hist:  # type: ignore[union-attr]
            he = hs + len(hd)
            a = max(start, hs)
            b = min(end, he)
            if b > a:
                c += _diff(data[a - start : b - start], hd[a - hs : b - hs])
        if c:
            self.stats["overlap_conflicts"] += c

    # --- time --------------------------------------------------------------------------------------
    def advance(self, now: float) -> list[Event]:
        """Apply timeouts up to ``now``: gaps that waited ``gap_timeout``, flows idle for
        ``idle_timeout`` (End "idle"), lingering flows forgotten after ``linger``."""
        events: list[Event] = []
        # `since + timeout > now` rather than `since > now - timeout`: the same float rounding as
        # the caller's `since + timeout`, so a deadline given exactly is met exactly.
        w = self._waiting
        gt = self.gap_timeout
        while w:
            dr = next(iter(w))
            if dr.gap_since + gt > now:
                break
            self._skip(dr, now, events)
        fls = self._flows
        it = self.idle_timeout
        while fls:
            fl = next(iter(fls.values()))
            if fl.last_seen + it > now:
                break
            self._finish(fl, "idle", now, events)
        c = self._closed
        lt = self.linger
        while c:
            k, t = next(iter(c.items()))
            if t + lt > now:
                break
            del c[k]
        return events

    def flush(self, now: float = 0.0) -> list[Event]:
        """End every live flow (the input is over): buffered bytes are delivered with gaps."""
        events: list[Event] = []
        for fl in list(self._flows.values()):
            self._finish(fl, "flush", now, events)
        return events


def _start(piece: list) -> int:
    return piece[0]
