"""Between a bytestream pipelet and the packets: reassemble, ask the pipelet, apply its verdicts.

:class:`StreamDriver` is pure logic (no asyncio). TCP packets go in with :meth:`StreamDriver.push`
(other packets are the caller's business); :meth:`StreamDriver.take_released` hands back
``(packet, verdict)`` pairs whose fate is decided, with ``verdict.meta`` already merged into
``packet.meta``.

It runs in one of two ways:

- **synchronous** (``StreamDriver(pipelet)``): the pipelet is called as the events happen. The
  switch uses it for inline NFs and :mod:`e2actors.testing` for replays.
- **deferred** (``StreamDriver(ports=...)``, no pipelet): the switch reassembles each flow once and
  the pipelet runs elsewhere (in an NF instance actor). The events become :class:`StreamJob`
  objects (:meth:`take_jobs`); whoever runs the pipelet answers each with :func:`tell` and the
  answer comes back through :meth:`resolve`. Until then the job's carriers wait, and so does
  every later packet of their flow, so the original order holds.

Rules (both ways):

- Each :class:`~e2actors.packet.reassembly.Chunk` goes to ``pipelet.on_stream(flow, direction,
  data)`` (with ``pipelet.carriers`` set to the packets that carried the bytes); the verdict
  applies to all the chunk's carriers. Normalization: None keeps the flow's current verdict
  (initially ``Verdict(port=ports[0])``); a string is ``Verdict(port=that)``; a :class:`Verdict`
  is taken as is (port None: the first port). A sticky verdict (the default) becomes the flow's
  current one.
- Each Gap goes to ``pipelet.on_gap(flow, direction, missing)``; a sticky verdict from it becomes
  the current one (the bytes after the gap come in the next chunk and take on_stream's verdict).
- A SYN without ACK tells the pipelet which side is the client (``pipelet.set_client``); a SYN/ACK
  tells it which side answered (``pipelet.set_server``: the handshake was seen). A flow joined
  mid-stream whose first packets carried no bytes (a capture starting with a pure ACK) tells it
  that first packet's side when its bytes open it (``pipelet.set_first_sender``).
- A packet with no new bytes (SYN, pure ACK, full retransmission, FIN/RST without data, a late
  packet of an ended flow) takes the flow's current verdict *when its turn to leave comes*, so it
  follows the decision made on the bytes sent before it.
- A packet whose new bytes wait out of order is HELD until they are delivered (the hole filled)
  or the gap times out (:meth:`advance`).
- Packets leave in their original arrival order per flow: a decided packet waits behind an
  undecided one of the same flow; other flows are never blocked.
- At the flow's End everything pending for it leaves (once its verdicts are in); the flow's verdict
  is remembered for the reassembler's ``linger`` time so late ACKs and retransmissions follow it.
  If the pipelet keeps state for the flow in ``pipelet.flows``, it is popped and
  ``pipelet.on_flow_end`` is called.
- An exception raised by the pipelet's hooks (or an answer naming no port of the NF) is counted
  (``stats["errors"]``, the latest ones in :attr:`errors`) and the flow keeps its current verdict:
  packets are never lost.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import replace
from typing import Any

from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.packet.packet import Packet
from e2actors.packet.reassembly import Chunk, Event, Gap, Reassembler

__all__ = ["CHUNK", "END", "GAP", "OPEN", "StreamDriver", "StreamJob", "tell"]

#: Kinds of :class:`StreamJob`.
OPEN, CHUNK, GAP, END = 0, 1, 2, 3
#: The ``arg`` of an OPEN job for a SYN/ACK (its direction is the server's); None for a SYN.
SYNACK = "synack"
#: How an OPEN job says that a flow joined mid-stream began with a payload-less packet from ``direction``.
MIDSTREAM = "midstream"
#: Flows remembered by their first payload-less packet at most (oldest forgotten first).
MAX_FIRST_SEEN = 65536

_LAZY = object()  # entry state: no new bytes; takes the flow's current verdict when it leaves
_PASSED = object()  # a resolved barrier (the place of a gap's verdict in its flow's queue)


class StreamJob:
    """One thing a bytestream pipelet must be told: a flow opened (``OPEN``), in-order bytes
    (``CHUNK``: ``arg`` is the data, ``carriers`` the packets that carried it), a hole given up on
    (``GAP``: ``arg`` is the number of missing bytes) or the end of the flow (``END``: ``arg`` is
    the reason). Only CHUNK and GAP answers matter; OPEN and END are told in order and need none."""

    __slots__ = ("kind", "flow", "direction", "arg", "carriers", "entries", "done", "fs", "answer")

    def __init__(self, kind: int, flow: Hashable, direction: int, arg: Any, carriers: tuple[Packet, ...],
                 entries: list | None = None) -> None:
        self.kind = kind
        self.flow = flow
        self.direction = direction
        self.arg = arg
        self.carriers = carriers
        self.entries = entries  # the flow-queue entries that wait for this job's verdict
        self.done = False
        self.fs: _FlowState | None = None  # deferred CHUNK/GAP: the flow state it decides for
        self.answer: Any = None

    def event(self) -> tuple[int, Hashable, int, Any, tuple[Packet, ...]]:
        """The job as a plain tuple for :class:`~e2actors.nf.messages.StreamWork`."""
        return (self.kind, self.flow, self.direction, self.arg, self.carriers)

    def __repr__(self) -> str:
        return f"StreamJob({('OPEN', 'CHUNK', 'GAP', 'END')[self.kind]}, dir={self.direction}, arg={self.arg!r:.40})"


def tell(pipelet: Pipelet, kind: int, flow: Hashable, direction: int, arg: Any,
         carriers: tuple[Packet, ...] | list[Packet] = ()) -> Verdict | str | None:
    """Tell ``pipelet`` one stream event; return its raw answer (for CHUNK and GAP). Raises what
    the pipelet raises; the caller counts it."""
    if kind == CHUNK:
        pipelet.carriers = carriers
        try:
            return pipelet.on_stream(flow, direction, arg)
        finally:
            pipelet.carriers = ()
    if kind == GAP:
        return pipelet.on_gap(flow, direction, arg)
    if kind == OPEN:
        if arg == SYNACK:
            pipelet.set_server(flow, direction)
        elif arg == MIDSTREAM:
            pipelet.set_first_sender(flow, direction)
        else:
            pipelet.set_client(flow, direction)
        return None
    if kind != END:
        raise ValueError(f"unknown stream event kind {kind!r}")
    if flow in pipelet.flows:
        pipelet.on_flow_end(flow, pipelet.flows.pop(flow))
    return None


class _FlowState:
    """The driver's per-flow state: the packets not yet released, in arrival order, and the
    current verdict. An entry is ``[packet, state]``: a Verdict (decided), None (its new bytes
    are not delivered yet), ``_LAZY``, or a StreamJob (its verdict is awaited). A barrier entry
    ``[None, job]`` keeps a gap's place until its verdict is in (then ``_PASSED``)."""

    __slots__ = ("queue", "current", "ended", "jobs", "prev", "next")

    def __init__(self, current: Verdict) -> None:
        self.queue: deque[list] = deque()
        self.current = current
        self.ended = False
        self.jobs: deque[StreamJob] = deque()  # deferred: CHUNK/GAP jobs not applied yet, in order
        # A new connection on the addresses of an ended one whose packets still wait: the new
        # one's packets leave after them (prev), and the old one's last drain wakes it (next).
        self.prev: _FlowState | None = None
        self.next: _FlowState | None = None


class StreamDriver:
    """Runs one bytestream NF's reassembly and verdicts over TCP packets (see the module docstring).

    Give ``pipelet`` to call it synchronously, or only ``ports`` (the NF's output ports) to defer
    the calls as :class:`StreamJob` objects. ``reassembler_options`` go to
    :class:`~e2actors.packet.reassembly.Reassembler` (``max_flow_buffer``, ``max_total_buffer``,
    ``gap_timeout``, ``idle_timeout``, ``history``, ``linger``); or pass a ready ``reassembler``.
    ``end_flows=False`` keeps the pipelet's flow state at a stream's end (synchronous only).
    """

    def __init__(self, pipelet: Pipelet | None = None, *, ports: Iterable[str] | None = None,
                 reassembler: Reassembler | None = None, end_flows: bool = True,
                 **reassembler_options: Any) -> None:
        if pipelet is None and ports is None:
            raise TypeError("StreamDriver needs a pipelet, or the NF's ports to defer to")
        self.pipelet = pipelet
        self.reassembler = reassembler if reassembler is not None else Reassembler(**reassembler_options)
        self.end_flows = end_flows
        self.ports = tuple(pipelet.ports if pipelet is not None else ports)  # type: ignore[union-attr]
        #: Deferred: jobs are collected for :meth:`take_jobs` instead of calling a pipelet.
        self.deferred = pipelet is None
        #: The verdict of a flow nobody decided on yet: the NF's first port.
        self.default = Verdict(port=self.ports[0])
        self._port_verdicts: dict[str, Verdict] = {p: Verdict(port=p) for p in self.ports}
        self._flows: dict[Hashable, _FlowState] = {}
        self._ended: OrderedDict[Hashable, float] = OrderedDict()  # ended flows -> end time
        self._held: dict[int, list] = {}  # id(packet) -> entry, for packets waiting for their bytes
        self._released: list[tuple[Packet, Verdict]] = []
        self._touched: list[_FlowState] = []
        self._jobs: list[StreamJob] = []
        self._pushed = 0
        self._nreleased = 0
        self._max_held = 0
        #: Flows not (yet) reassembled whose first packet was payload-less (a mid-stream capture
        #: that starts with a pure ACK): the direction it came from, for Suricata's midstream rule
        #: (the first packet's sender is the client) once the flow's bytes open it. Bounded.
        self._first_dir: OrderedDict[Hashable, int] = OrderedDict()
        self._max_pending = 0
        self._counts: dict[str, int] = dict.fromkeys(("chunks", "gaps", "ends", "errors", "awaiting"), 0)
        #: The latest errors: ``(flow, text)``.
        self.errors: deque[tuple[Hashable, str]] = deque(maxlen=32)

    # --- counters ----------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counters: packets (pushed), released, held and pending (now), max_held, max_pending,
        chunks, gaps, ends, errors (the pipelet raised or answered nonsense), awaiting (deferred
        CHUNK and GAP jobs not answered yet)."""
        return {"packets": self._pushed, "released": self._nreleased, "held": len(self._held),
                "pending": self._pushed - self._nreleased, "max_held": self._max_held,
                "max_pending": self._max_pending, **self._counts}

    @property
    def held(self) -> int:
        """Packets waiting now for their bytes to become in order."""
        return len(self._held)

    @property
    def pending(self) -> int:
        """Packets pushed and not released yet (held, awaiting a verdict, or queued behind those)."""
        return self._pushed - self._nreleased

    # --- input -------------------------------------------------------------------------------
    def tracks(self, flow: Hashable) -> bool:
        """Whether ``flow`` has stream state here (it was seen and not yet forgotten)."""
        return flow in self._flows

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
                    if key is not None and key not in self._first_dir:
                        self._first_dir[key] = pkt.direction
                        if len(self._first_dir) > MAX_FIRST_SEEN:
                            self._first_dir.popitem(last=False)
                    self._released.append((pkt, self.default))
                    self._nreleased += 1
                    return
            else:
                # A new flow, or a new connection (SYN) on an ended flow's addresses.
                old = fs
                fs = self._flows[key] = _FlowState(self.default)
                if old is not None:
                    self._ended.pop(key, None)
                    if old.queue:
                        fs.prev = old
                        old.next = fs
        if key is not None and pkt.tcp_flags & 0x02:
            self._first_dir.pop(key, None)
            if pkt.tcp_flags & 0x12 == 0x02:  # a SYN opens the flow: its sender is the client
                self._open(key, pkt.direction)
            else:  # a SYN/ACK: its sender answered, it is the server (the handshake was seen)
                self._open(key, pkt.direction, SYNACK)
        elif self._first_dir and key in self._first_dir:
            # Joined mid-stream after payload-less packets: the first of them fixes the client.
            self._open(key, self._first_dir.pop(key), MIDSTREAM)
        if not events and not fs.queue and not r.last_held and fs.prev is None:
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
            if fs is not None and fs.ended:
                if fs.queue:
                    e[k] = now  # verdicts still awaited: look again after another linger
                else:
                    del self._flows[k]

    def flush(self, now: float = 0.0) -> None:
        """The input is over: end every flow and release everything (deferred: once answered)."""
        events = self.reassembler.flush(now)
        if events:
            self._handle(events, None, None, None, now)
            self._drain_touched()

    @property
    def has_released(self) -> bool:
        """Decided packets wait for :meth:`take_released`."""
        return bool(self._released)

    def take_released(self) -> list[tuple[Packet, Verdict]]:
        """The packets decided since the last call, with their verdicts, in release order."""
        out = self._released
        self._released = []
        return out

    # --- deferred mode -------------------------------------------------------------------------
    def take_jobs(self) -> list[StreamJob]:
        """Deferred: the jobs created since the last call, in order. Tell them to the flow's
        pipelet in this order and :meth:`resolve` each CHUNK and GAP with its answer."""
        out = self._jobs
        self._jobs = []
        return out

    def resolve(self, job: StreamJob, answer: Verdict | str | None, error: str = "") -> None:
        """Deferred: ``answer`` is what the pipelet said to ``job`` (``error``: it failed, keep the
        flow's verdict). The packets it decides leave with :meth:`take_released`. Answers may come
        in any order; they take effect in the flow's job order (so None means the verdict of the
        bytes before). A job resolved twice keeps its first answer."""
        if job.done:
            return
        job.done = True
        if job.kind != CHUNK and job.kind != GAP:
            return
        self._counts["awaiting"] -= 1
        job.answer = answer
        if error:
            self._error(job.flow, error)
            job.answer = None
        fs = job.fs
        if fs is None:
            return
        jobs = fs.jobs
        if jobs[0] is not job:
            return  # an earlier job of the flow is still out: applied after it
        while jobs and jobs[0].done:
            j = jobs.popleft()
            try:
                v = self._normalize(j.answer, fs)
            except (ValueError, TypeError) as exc:
                self._error(j.flow, repr(exc))
                v = fs.current
            self._apply(j, v, fs)
        if fs.queue:
            self._drain(fs)

    def as_gap(self, job: StreamJob, verdict: Verdict) -> None:
        """Deferred: ``job``, a CHUNK not answered yet, will not be told as bytes (its work could
        not be delivered): its carriers take ``verdict`` now and the job becomes a GAP of as many
        bytes, still to be told and answered in its place (a sticky answer to it is the flow's
        verdict from there on, as for any gap)."""
        if job.done or job.kind != CHUNK:
            return
        fs = job.fs
        last = None
        for e in job.entries:  # type: ignore[union-attr]
            if e[1] is job:
                e[1] = verdict
                last = e
        job.kind = GAP
        job.arg = len(job.arg)
        job.carriers = ()
        barrier = [None, job]
        job.entries = [barrier]
        if fs is None:
            return
        q = fs.queue
        at = len(q)
        if last is not None:
            for i, e in enumerate(q):
                if e is last:
                    at = i + 1
                    break
        q.insert(at, barrier)
        self._drain(fs)

    def _apply(self, job: StreamJob, v: Verdict, fs: _FlowState) -> None:
        if v.sticky:
            fs.current = v
        if job.kind == CHUNK:
            for e in job.entries:  # type: ignore[union-attr]
                if e[1] is job:
                    e[1] = v
        else:
            for e in job.entries:  # type: ignore[union-attr]
                e[1] = _PASSED

    # --- internals ----------------------------------------------------------------------------
    def _normalize(self, v: Any, fs: _FlowState) -> Verdict:
        if v is None:
            return fs.current
        if type(v) is str:
            pv = self._port_verdicts.get(v)
            if pv is None:
                raise ValueError(f"no port {v!r} (ports: {self.ports})")
            return pv
        if isinstance(v, Verdict):  # (one decoded from another node had its field types checked)
            if v.port is None and not v.drop:
                return replace(v, port=self.ports[0])
            if v.port is not None and v.port not in self._port_verdicts and not v.drop:
                raise ValueError(f"no port {v.port!r} (ports: {self.ports})")
            return v
        raise TypeError(f"a verdict must be None, a port name or a Verdict, not {type(v).__name__}")

    def _error(self, flow: Hashable, text: str) -> None:
        self._counts["errors"] += 1
        self.errors.append((flow, text))

    def _open(self, flow: Hashable, direction: int, how: str | None = None) -> None:
        if self.deferred:
            self._jobs.append(StreamJob(OPEN, flow, direction, how, ()))
            return
        try:
            tell(self.pipelet, OPEN, flow, direction, how)  # type: ignore[arg-type]
        except Exception as exc:
            self._error(flow, repr(exc))

    def _judge(self, job: StreamJob, fs: _FlowState) -> Verdict:
        """Synchronous: ask the pipelet now."""
        try:
            return self._normalize(tell(self.pipelet, job.kind, job.flow, job.direction,  # type: ignore[arg-type]
                                        job.arg, job.carriers), fs)
        except Exception as exc:  # the NF's bug must not lose packets
            self._error(job.flow, repr(exc))
            return fs.current

    def _handle(self, events: list[Event], pkt: Packet | None, entry: list | None, own: _FlowState | None,
                now: float) -> None:
        """Turn each event into a job: judged now (synchronous) or later (deferred)."""
        flows = self._flows
        held = self._held
        touched = self._touched
        st = self._counts
        deferred = self.deferred
        for ev in events:
            fs = flows.get(ev.flow)
            if fs is None:  # cannot happen for flows the reassembler tracks; be safe
                fs = flows[ev.flow] = _FlowState(self.default)
            tp = type(ev)
            if tp is Chunk:
                st["chunks"] += 1
                entries = []
                for c in ev.carriers:  # type: ignore[union-attr]
                    e = entry if c is pkt else held.pop(id(c), None)
                    if e is not None:
                        entries.append(e)
                job = StreamJob(CHUNK, ev.flow, ev.direction, ev.data, tuple(ev.carriers), entries)  # type: ignore[union-attr]
                if deferred:
                    for e in entries:
                        e[1] = job
                    self._defer(job, fs)
                else:
                    v = self._judge(job, fs)
                    if v.sticky:
                        fs.current = v
                    for e in entries:
                        e[1] = v
            elif tp is Gap:
                st["gaps"] += 1
                job = StreamJob(GAP, ev.flow, ev.direction, ev.missing, (), [])  # type: ignore[union-attr]
                if deferred:
                    barrier = [None, job]  # later packets of the flow wait for the gap's verdict
                    job.entries.append(barrier)  # type: ignore[union-attr]
                    fs.queue.append(barrier)
                    self._defer(job, fs)
                else:
                    v = self._judge(job, fs)
                    if v.sticky:
                        fs.current = v
            else:  # End: whatever still waits for bytes leaves with the current verdict
                st["ends"] += 1
                for e in fs.queue:
                    if e[1] is None:
                        held.pop(id(e[0]), None)
                        e[1] = _LAZY
                fs.ended = True
                self._ended[ev.flow] = now
                self._ended.move_to_end(ev.flow)
                if deferred:
                    self._jobs.append(StreamJob(END, ev.flow, -1, ev.reason, ()))  # type: ignore[union-attr]
                elif self.end_flows:
                    try:
                        tell(self.pipelet, END, ev.flow, -1, ev.reason)  # type: ignore[arg-type, union-attr]
                    except Exception as exc:
                        self._error(ev.flow, repr(exc))
            if fs is not own:
                touched.append(fs)  # drained after the events (the caller drains its own flow)

    def _defer(self, job: StreamJob, fs: _FlowState) -> None:
        """Deferred: ``job`` (CHUNK or GAP) waits for its answer, in its flow's job order."""
        self._counts["awaiting"] += 1
        job.fs = fs
        fs.jobs.append(job)
        self._jobs.append(job)

    def _drain(self, fs: _FlowState) -> None:
        """Release the decided packets at the front of a flow's queue."""
        p = fs.prev
        if p is not None:
            if p.queue:
                return  # the previous connection on these addresses goes first
            fs.prev = None
        q = fs.queue
        out = self._released
        n = 0
        while q:
            e = q[0]
            v = e[1]
            if v is None or type(v) is StreamJob:
                break
            q.popleft()
            if v is _PASSED:
                continue
            if v is _LAZY:
                v = fs.current
            if v.meta:
                e[0].meta.update(v.meta)
            out.append((e[0], v))
            n += 1
        self._nreleased += n
        if not q and fs.next is not None:
            nxt = fs.next
            fs.next = None
            self._drain(nxt)

    def _drain_touched(self) -> None:
        t = self._touched
        self._touched = []
        for fs in t:
            if fs.queue:
                self._drain(fs)
