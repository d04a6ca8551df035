"""``PipeletRunner``: drives one pipelet over batches. Shared by the NF instance actor, the switch
(for inline NFs) and :mod:`e2actors.testing`, so a pipelet behaves the same everywhere.

It keeps the pipelet's clock (packet time or wall time), routes TCP packets of bytestream NFs
through the :class:`~e2actors.nf.stream.StreamDriver` (reassembly, verdicts, original order) when
it runs alone or inline, or takes the stream the switch reassembled (:meth:`PipeletRunner.judge`),
expires idle flows, fires timers, measures busy time, and accounts for every packet: each one
that enters leaves on a port, is dropped with a reason, is held (a shaper's queue, a stream
waiting for a gap), or is counted lost when the pipelet raises.
"""

from __future__ import annotations

import bisect
import collections
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet

__all__ = ["BATCH_BUCKETS", "PipeletRunner", "RunnerStats", "count_origins"]

Clock = Literal["packet", "wall", "replay"]

#: ``replay`` clock: wall seconds without a packet after which the pipelet's time moves on with the
#: wall clock from the last packet's time, until the end of the input is told (then at once): a
#: safety net, long enough that a busy machine's pauses do not change a replay's outcome.
REPLAY_IDLE = 2.0

_origin = operator.attrgetter("origin")


def count_origins(pkts: list[Packet]) -> dict[int, int]:
    """Ingress credits held by ``pkts``: origin -> packets (origin 0, no credit, left out)."""
    if not pkts:
        return {}
    o = pkts[0].origin
    if pkts[-1].origin == o and len(pkts) < 3:
        return {o: len(pkts)} if o else {}
    c = collections.Counter(map(_origin, pkts))
    c.pop(0, None)
    return c


#: Upper bounds (seconds) of the batch processing time histogram.
BATCH_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class RunnerStats:
    """What went through one pipelet instance."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    per_port: collections.Counter = field(default_factory=collections.Counter)
    dropped: int = 0
    lost: int = 0  # packets of batches whose processing raised
    errors: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    #: Batch processing times: counts per bucket of BATCH_BUCKETS (seconds), the last is +Inf.
    batch_hist: list = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "packets_in": self.packets_in, "bytes_in": self.bytes_in, "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "per_port": dict(self.per_port), "dropped": self.dropped, "lost": self.lost,
            "errors": self.errors, "batches": self.batches, "busy_seconds": self.busy_seconds,
            "batch_hist": list(self.batch_hist),
        }


class PipeletRunner:
    """Feeds a pipelet and collects what it emits. ``clock="packet"`` takes the time from packet
    timestamps (deterministic replays), ``"wall"`` from ``time.time()`` (live traffic);
    ``"replay"`` is packet time while packets come, and once none came for :data:`REPLAY_IDLE`
    seconds it moves on with the wall clock from the last packet's time (a capture replayed as
    fast as the deployment takes it: results do not depend on the machine's speed, and what is
    held at the end still leaves)."""

    def __init__(self, pipelet: Pipelet, clock: Clock = "wall") -> None:
        self.pipelet = pipelet
        self.clock = clock
        self._last_ts = 0.0  # (replay) the latest packet time seen, and when (monotonic)
        self._wall_last = time.monotonic()
        #: (replay) the deployment's input ended: time goes on with the wall clock from now on.
        self.input_done = False
        self.stats = RunnerStats()
        self.started = False
        self._next_timer: float | None = None
        self._stream = None
        if pipelet.input == "bytestream":
            from e2actors.nf.stream import StreamDriver

            self._stream = StreamDriver(pipelet)
        self._drops_seen = 0
        self._port_set = frozenset(pipelet.ports)
        #: The latest errors of deferred stream work (see :meth:`judge`): ``(flow, text)``.
        self.stream_errors: collections.deque = collections.deque(maxlen=32)
        # Ingress credits (see e2actors.switch.credits): what the pipelet holds, by origin (in
        # minus out minus dropped), and what it is done with and has not handed back yet.
        self._credit: dict[int, int] = {}
        self._finished: dict[int, int] = {}

    async def start(self, config: dict[str, Any] | None = None) -> None:
        self.pipelet.config = dict(config or {})
        if self.clock == "wall":
            self.pipelet.now = time.time()
        self.pipelet.settings = self.pipelet.parse_settings(self.pipelet.config)
        await self.pipelet.setup(self.pipelet.config)
        opts = getattr(self.pipelet, "reassembly", None)
        if opts and self._stream is not None and not self._stream.pending:
            # The pipelet chose reassembly options (e.g. the IDS's overlap policy) in its setup.
            from e2actors.nf.stream import StreamDriver

            self._stream = StreamDriver(self.pipelet, **opts)
        self.started = True

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self.pipelet.teardown()

    # --- the hot path ---------------------------------------------------------------------------
    async def run(self, batch: Batch) -> dict[str, list[Packet]]:
        """Process one batch; return ``port -> packets`` that left the pipelet (possibly packets of
        earlier batches that were held). Raises what the pipelet raised, after counting the batch
        as lost."""
        p = self.pipelet
        st = self.stats
        pkts = batch.packets
        n = len(pkts)
        cin = count_origins(pkts)
        if cin:
            bal = self._credit
            for o, k in cin.items():
                bal[o] = bal.get(o, 0) + k
        st.batches += 1
        st.packets_in += n
        st.bytes_in += sum([len(x.data) for x in pkts])
        clock = self.clock
        if clock == "packet":
            if n and pkts[-1].ts > p.now:
                p.now = pkts[-1].ts
        elif clock == "wall":
            p.now = time.time()
        else:
            self._seen(pkts)
        t0 = time.perf_counter()
        try:
            if self._stream is None:
                await p.process(batch)
            else:
                await self._run_stream(batch)
            self._housekeeping()
        except Exception:
            dt = time.perf_counter() - t0
            st.busy_seconds += dt
            st.batch_hist[bisect.bisect_left(BATCH_BUCKETS, dt)] += 1
            st.errors += 1
            st.lost += n
            # Nothing of a failed batch leaves half-done: its packets, and what it had emitted,
            # are lost (their credits go back).
            self._settle_lost(cin, p.take_outputs())
            raise
        dt = time.perf_counter() - t0
        st.busy_seconds += dt
        st.batch_hist[bisect.bisect_left(BATCH_BUCKETS, dt)] += 1
        return self._collect()

    def judge(self, events: tuple | list, packets: int = 0, nbytes: int = 0) -> tuple[Any, ...]:
        """Bytestream work reassembled by the switch: tell the pipelet each ``(kind, flow, direction,
        arg, carriers)`` event in order (see :class:`~e2actors.nf.stream.StreamJob`) and return one
        answer per event: None, a port name or a :class:`Verdict`. A hook that raises, or answers
        with a port the NF does not have, is counted in ``stats.errors`` (the latest in
        :attr:`stream_errors`) and answers None: the flow keeps its verdict, no packet is lost.
        ``packets``/``nbytes``: the flows' packets the switch took for this instance (its load)."""
        from e2actors.nf.stream import tell

        p = self.pipelet
        st = self.stats
        st.batches += 1
        st.packets_in += packets
        st.bytes_in += nbytes
        if self.clock == "wall":
            p.now = time.time()
        ports = self._port_set
        t0 = time.perf_counter()
        answers: list[Any] = []
        for ev in events:
            flow = None
            try:  # (a malformed event from the wire is counted like an NF error, never raised)
                kind, flow, direction, arg, carriers = ev
                if self.clock == "packet":
                    for c in carriers:
                        if c.ts > p.now:
                            p.now = c.ts
                elif self.clock == "replay" and carriers:
                    self._seen(carriers)
                a = tell(p, kind, flow, direction, arg, carriers)
                if a is not None:
                    port = a if type(a) is str else getattr(a, "port", "")
                    if type(a) is not str and not isinstance(a, Verdict):
                        raise TypeError(f"a verdict must be None, a port name or a Verdict, not {type(a).__name__}")
                    if port is not None and port not in ports and not (type(a) is Verdict and a.drop):
                        raise ValueError(f"{type(p).__name__} has no port {port!r} (ports: {p.ports})")
            except Exception as exc:  # the NF's bug must not lose packets: keep the flow's verdict
                st.errors += 1
                self.stream_errors.append((flow, repr(exc)))
                a = None
            answers.append(a)
        self._housekeeping()
        dt = time.perf_counter() - t0
        st.busy_seconds += dt
        st.batch_hist[bisect.bisect_left(BATCH_BUCKETS, dt)] += 1
        return tuple(answers)

    def account(self, released: tuple | list = (), drops: tuple | list = ()) -> None:
        """Count what left by this instance's verdicts in the switch: ``(port, packets)`` and
        ``(reason, packets)`` pairs."""
        st = self.stats
        p = self.pipelet
        for port, n in released:
            st.per_port[port] += n
            st.packets_out += n
        for reason, n in drops:
            p.count_dropped(reason, n)
        st.dropped = p.dropped_total

    async def _run_stream(self, batch: Batch) -> None:
        p = self.pipelet
        drv = self._stream
        other: list[Packet] = []
        now = p.now
        for pkt in batch.packets:
            if pkt.proto == 6 and pkt.reason is None and pkt.l4_offset >= 0:
                drv.push(pkt, now)  # type: ignore[union-attr]
            else:
                other.append(pkt)
        if other:
            await p.process(Batch(other))
        self._release(drv.take_released())  # type: ignore[union-attr]

    def _release(self, decided: list[tuple[Packet, Verdict]]) -> None:
        p = self.pipelet
        for pkt, v in decided:
            if v.drop:
                p.drop(pkt, v.reason or "dropped by verdict")
            else:
                p.emit(pkt, v.port)

    def _housekeeping(self) -> None:
        p = self.pipelet
        now = p.now
        for key, state in p.flows.expire(now):
            p.on_flow_end(key, state)
        if p.timer_interval is not None:
            if self._next_timer is None:
                self._next_timer = now + p.timer_interval
            while now >= self._next_timer:
                p.on_timer()
                self._next_timer += p.timer_interval
                if now - self._next_timer > 10 * p.timer_interval:
                    self._next_timer = now + p.timer_interval  # do not replay a long idle gap tick by tick
        if self._stream is not None:
            self._stream.advance(now)
            self._release(self._stream.take_released())

    def _collect(self) -> dict[str, list[Packet]]:
        p = self.pipelet
        out = p.take_outputs()
        st = self.stats
        for port, lst in out.items():
            if lst:
                st.per_port[port] += len(lst)
                st.packets_out += len(lst)
                st.bytes_out += sum([len(x.data) for x in lst])
        st.dropped = p.dropped_total
        self._settle(out)
        return out

    def _seen(self, pkts: Any) -> None:
        """(replay clock) packets came: their time is the pipelet's."""
        ts = max([x.ts for x in pkts]) if pkts else 0.0
        if ts > self._last_ts:
            self._last_ts = ts
        self._wall_last = time.monotonic()
        p = self.pipelet
        if self._last_ts > p.now:
            p.now = self._last_ts

    def _settle(self, out: dict[str, list[Packet]] | None) -> None:
        """Credit accounting after a call: what left holds its credit on; what the pipelet dropped
        is finished; once it holds nothing, whatever credit is left was consumed (a pipelet that
        emits new packets for old ones, or raised): finished too."""
        bal = self._credit
        if out:
            for lst in out.values():
                if lst:
                    for o, k in count_origins(lst).items():
                        bal[o] = bal.get(o, 0) - k
        p = self.pipelet
        fin = self._finished
        for o, k in p.take_finished().items():
            bal[o] = bal.get(o, 0) - k
            fin[o] = fin.get(o, 0) + k
        if bal and (out is None or self.pipelet.pending() == 0 and (self._stream is None or self._stream.held == 0)):
            for o, k in bal.items():
                if k:
                    fin[o] = fin.get(o, 0) + k
            bal.clear()

    def _settle_lost(self, cin: dict[int, int], discarded: dict[str, list[Packet]]) -> None:
        bal, fin = self._credit, self._finished
        lost = dict(cin)
        for lst in discarded.values():
            for o, k in count_origins(lst).items():
                lost[o] = lost.get(o, 0) + k
        for o, k in lost.items():
            bal[o] = bal.get(o, 0) - k
            fin[o] = fin.get(o, 0) + k
        self._settle({})

    def take_finished(self) -> tuple[tuple[int, int], ...]:
        """Ingress credits of the packets this pipelet is done with since the last call (dropped,
        lost, consumed): ``(origin, packets)`` pairs for the switch that admitted them."""
        fin = self._finished
        if not fin:
            return ()
        self._finished = {}
        return tuple((o, k) for o, k in fin.items() if k)

    def release_credits(self) -> tuple[tuple[int, int], ...]:
        """The instance stops: every credit it holds is finished (its held packets are lost)."""
        self._settle(None)
        return self.take_finished()

    @property
    def has_finished(self) -> bool:
        """Credits wait to be handed back (:meth:`take_finished`)."""
        return bool(self._finished)

    @property
    def credits_held(self) -> int:
        """Ingress credits the pipelet holds (packets inside it)."""
        return sum(self._credit.values())

    async def tick(self, now: float | None = None) -> dict[str, list[Packet]]:
        """Advance time without packets (timers, flow expiry, stream gap timeouts)."""
        p = self.pipelet
        if now is not None:
            p.now = max(p.now, now)
        elif self.clock == "wall":
            p.now = time.time()
        elif self.clock == "replay":
            idle = time.monotonic() - self._wall_last
            grace = 0.0 if self.input_done else REPLAY_IDLE
            if idle > grace and self._last_ts:
                p.now = max(p.now, self._last_ts + idle - grace)
        t0 = time.perf_counter()
        self._housekeeping()
        self.stats.busy_seconds += time.perf_counter() - t0
        return self._collect()

    async def finish(self, max_seconds: float = 3600.0) -> dict[str, list[Packet]]:
        """End of input (a capture replayed): release what is held by advancing time, timer by timer,
        until the pipelet holds nothing (bounded by ``max_seconds`` of pipelet time)."""
        p = self.pipelet
        out: dict[str, list[Packet]] = collections.defaultdict(list)
        if self._stream is not None:
            self._stream.flush(p.now)
            self._release(self._stream.take_released())
        await p.flush()
        step = p.timer_interval or 1.0
        end = p.now + max_seconds
        while True:
            for port, lst in (await self.tick(p.now)).items():
                out[port].extend(lst)
            if p.pending() == 0 or p.now >= end or p.timer_interval is None:
                break
            p.now += step
        return dict(out)

    @property
    def held(self) -> int:
        """Packets inside the pipelet or the stream driver right now."""
        n = self.pipelet.pending()
        if self._stream is not None:
            n += self._stream.held
        return n
