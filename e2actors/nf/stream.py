"""Between a bytestream pipelet and the packets: reassemble, ask the pipelet, apply its verdicts.

:class:`StreamDriver` is pure logic (no asyncio): the NF instance actor, the switch and
:mod:`e2actors.testing` wrap it. TCP packets go in with :meth:`StreamDriver.push` (other packets
are the caller's business); :meth:`StreamDriver.take_released` hands back ``(packet, verdict)``
pairs whose fate is decided, with ``verdict.meta`` already merged into ``packet.meta``.

Rules:

- Each :class:`~e2actors.packet.reassembly.Chunk` goes to ``pipelet.on_stream(flow, direction,
  data)``; the verdict applies to all the chunk's carriers (the packets whose new bytes it holds).
  Normalization: None keeps the flow's current verdict (initially ``Verdict(port=ports[0])``); a
  string is ``Verdict(port=that)``; a :class:`Verdict` is taken as is (port None: the first port).
  A sticky verdict (the default) becomes the flow's current one.
- Each Gap goes to ``pipelet.on_gap(flow, direction, missing)``; a sticky verdict from it becomes
  the current one (the bytes after the gap come in the next chunk and take on_stream's verdict).
- A packet with no new bytes (SYN, pure ACK, full retransmission, FIN/RST without data, a late
  packet of an ended flow) takes the flow's current verdict *when its turn to leave comes*, so it
  follows the decision made on the bytes sent before it.
- A packet whose new bytes wait out of order is HELD until they are delivered (the hole filled)
  or the gap times out (:meth:`advance`).
- Packets leave in their original arrival order per flow: a decided packet waits behind an
  undecided one of the same flow; other flows are never blocked.
- At the flow's End everything pending for it leaves; the flow's verdict is remembered for the
  reassembler's ``linger`` time so late ACKs and retransmissions follow it. If the pipelet keeps
  state for the flow in ``pipelet.flows``, it is popped and ``pipelet.on_flow_end`` is called.
- An exception raised by ``on_stream``/``on_gap``/``on_flow_end`` is counted (``stats["errors"]``,
  the latest ones in :attr:`errors`) and the flow keeps its current verdict: packets are never lost.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.packet.packet import Packet
from e2actors.packet.reassembly import Chunk, Event, Gap, Reassembler

__all__ = ["StreamDriver"]

_LAZY = object()  # entry state: no new bytes; takes the flow's current verdict when it leaves


class _FlowState:
    """The driver's per-flow state: the packets not yet released, in arrival order, and the
    current verdict. An entry is ``[packet, state]``: a Verdict (decided), None (its new bytes
    are not delivered yet: it blocks the flow) or ``_LAZY``."""

    __slots__ = ("queue", "current", "ended")

    def __init__(self, current: Verdict) -> None:
        self.queue: deque[list] = deque()
        self.current = current
        self.ended = False


class StreamDriver:
    """Runs one bytestream pipelet over TCP packets (see the module docstring for the rules).

    ``reassembler_options`` go to :class:`~e2actors.packet.reassembly.Reassembler`
    (``max_flow_buffer``, ``max_total_buffer``, ``gap_timeout``, ``idle_timeout``, ``history``,
    ``linger``); or pass a ready ``reassembler``.
    """

    def __init__(self, pipelet: Pipelet, *, reassembler: Reassembler | None = None, end_flows: bool = True,
                 **reassembler_options: Any) -> None:
        self.pipelet = pipelet
        self.reassembler = reassembler if reassembler is not None else Reassembler(**reassembler_options)
        self.end_flows = end_flows
        self.ports = tuple(pipelet.ports)
        #: The verdict of a flow nobody decided on yet: the pipelet's first port.
        self.default = Verdict(port=self.ports[0])
        self._port_verdicts: dict[str, Verdict] = {p: Verdict(port=p) for p in self.ports}
        self._flows: dict[Hashable, _FlowState] = {}
        self._ended: OrderedDict[Hashable, float] = OrderedDict()  # ended flows -> end time
        self._held: dict[int, list] = {}  # id(packet) -> entry, for packets waiting for their bytes
        self._released: list[tuple[Packet, Verdict]] = []
        self._touched: list[_FlowState] = []
        self._pushed = 0
        self._nreleased = 0
        self._max_held = 0
        self._max_pending = 0
        self._counts: dict[str, int] = dict.fromkeys(("chunks", "gaps", "ends", "errors"), 0)
        #: The latest exceptions from the pipelet: ``(flow, repr(exc))``.
        self.errors: deque[tuple[Hashable, str]] = deque(maxlen=32)

    # --- counters ----------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counters: packets (pushed), released, held and pending (now), max_held, max_pending,
        chunks, gaps, ends, errors (the pipelet raised)."""
        return {"packets": self._pushed, "released": self._nreleased, "held": len(self._held),
                "pending": self._pushed - self._nreleased, "max_held": self._max_held,
                "max_pending": self._max_pending, **self._counts}

    @property
    def held(self) -> int:
        """Packets waiting now for their bytes to become in order."""
        return len(self._held)

    @property
    def pending(self) -> int:
        """Packets pushed and not released yet (held ones and those queued behind them)."""
        return self._pushed - self._nreleased

    # --- input -------------------------------------------------------------------------------
    def push(self, pkt: Packet, now: float | None = None) -> None:
        """Take one TCP packet (in arrival order); ``now`` defaults to ``pkt.ts``."""
        if now is None:
            now = pkt.ts
        r = self.reassembler
        events = r.feed(pkt, now)
        key = r.last_key
        self._pushed += 1
        fs = self._flows.get(key) if key is not None else None
        if fs is None or fs.ended:
            if key is None or not r.tracks(key):
                if fs is None:
                    # Not reassembled (not TCP, malformed, a stray ACK): nothing to wait for.
                    self._released.append((pkt, self.default))
                    self._nreleased += 1
                    return
            else:
                # A new flow, or a new connection (SYN) on an ended flow's addresses.
                if fs is not None:
                    self._ended.pop(key, None)
                fs = self._flows[key] = _FlowState(self.default)
        if not events and not fs.queue and not r.last_held:
            # The common case (a pure ACK, ...): nothing waits in its flow, no bytes to judge.
            v = fs.current
            if v.meta:
                pkt.meta.update(v.meta)
            self._released.append((pkt, v))
            self._nreleased += 1
            return
        entry = [pkt, None]
        fs.queue.append(entry)
        if events:
            self._handle(events, pkt, entry, fs, now)
        if r.last_held:
            self._held[id(pkt)] = entry
            n = len(self._held)
            if n > self._max_held:
                self._max_held = n
        elif entry[1] is None:
            entry[1] = _LAZY
        self._drain(fs)
        if self._touched:
            self._drain_touched()
        n = self._pushed - self._nreleased
        if n > self._max_pending:
            self._max_pending = n

    def advance(self, now: float) -> None:
        """Apply the timeouts up to ``now`` (gaps, idle flows) and forget ended flows after linger."""
        events = self.reassembler.advance(now)
        if events:
            self._handle(events, None, None, None, now)
            self._drain_touched()
        e = self._ended
        lt = self.reassembler.linger
        while e:
            k, t = next(iter(e.items()))
            if t + lt > now:
                break
            del e[k]
            fs = self._flows.get(k)
            if fs is not None and fs.ended and not fs.queue:
                del self._flows[k]

    def flush(self, now: float = 0.0) -> None:
        """The input is over: end every flow and release everything."""
        events = self.reassembler.flush(now)
        if events:
            self._handle(events, None, None, None, now)
            self._drain_touched()

    def take_released(self) -> list[tuple[Packet, Verdict]]:
        """The packets decided since the last call, with their verdicts, in release order."""
        out = self._released
        self._released = []
        return out

    # --- internals ----------------------------------------------------------------------------
    def _normalize(self, v: Any, fs: _FlowState) -> Verdict:
        if v is None:
            return fs.current
        if type(v) is str:
            pv = self._port_verdicts.get(v)
            if pv is None:
                raise ValueError(f"{type(self.pipelet).__name__} has no port {v!r} (ports: {self.ports})")
            return pv
        if isinstance(v, Verdict):
            if v.port is None and not v.drop:
                return replace(v, port=self.ports[0])
            if v.port is not None and v.port not in self._port_verdicts and not v.drop:
                raise ValueError(f"{type(self.pipelet).__name__} has no port {v.port!r} (ports: {self.ports})")
            return v
        raise TypeError(f"a verdict must be None, a port name or a Verdict, not {type(v).__name__}")

    def _error(self, flow: Hashable, exc: BaseException) -> None:
        self._counts["errors"] += 1
        self.errors.append((flow, repr(exc)))

    def _handle(self, events: list[Event], pkt: Packet | None, entry: list | None, own: _FlowState | None,
                now: float) -> None:
        """Ask the pipelet about each event and mark the decided packets."""
        flows = self._flows
        held = self._held
        touched = self._touched
        st = self._counts
        for ev in events:
            fs = flows.get(ev.flow)
            if fs is None:  # cannot happen for flows the reassembler tracks; be safe
                fs = flows[ev.flow] = _FlowState(self.default)
            tp = type(ev)
            if tp is Chunk:
                st["chunks"] += 1
                try:
                    v = self._normalize(self.pipelet.on_stream(ev.flow, ev.direction, ev.data), fs)
                except Exception as exc:  # the NF's bug must not lose packets
                    self._error(ev.flow, exc)
                    v = fs.current
                if v.sticky:
                    fs.current = v
                for c in ev.carriers:  # type: ignore[union-attr]
                    e = entry if c is pkt else held.pop(id(c), None)
                    if e is not None:
                        e[1] = v
            elif tp is Gap:
                st["gaps"] += 1
                try:
                    v = self._normalize(self.pipelet.on_gap(ev.flow, ev.direction, ev.missing), fs)  # type: ignore[union-attr]
                except Exception as exc:
                    self._error(ev.flow, exc)
                    v = fs.current
                if v.sticky:
                    fs.current = v
            else:  # End: whatever still waits leaves with the current verdict
                st["ends"] += 1
                for e in fs.queue:
                    if e[1] is None:
                        held.pop(id(e[0]), None)
                        e[1] = _LAZY
                fs.ended = True
                self._ended[ev.flow] = now
                self._ended.move_to_end(ev.flow)
                if self.end_flows:
                    self._end_flow(ev.flow)  # type: ignore[arg-type]
            if fs is not own:
                touched.append(fs)  # drained after the events (the caller drains its own flow)

    def _end_flow(self, flow: Hashable) -> None:
        p = self.pipelet
        if flow in p.flows:
            state = p.flows.pop(flow)
            try:
                p.on_flow_end(flow, state)
            except Exception as exc:
                self._error(flow, exc)

    def _drain(self, fs: _FlowState) -> None:
        """Release the decided packets at the front of a flow's queue."""
        q = fs.queue
        out = self._released
        n = 0
        while q:
            e = q[0]
            v = e[1]
            if v is None:
                break
            if v is _LAZY:
                v = fs.current
            q.popleft()
            if v.meta:
                e[0].meta.update(v.meta)
            out.append((e[0], v))
            n += 1
        self._nreleased += n

    def _drain_touched(self) -> None:
        t = self._touched
        self._touched = []
        for fs in t:
            if fs.queue:
                self._drain(fs)
