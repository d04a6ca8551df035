"""``Switch``: the per-server dataplane actor (E2D in the paper).

Packets enter from ports, are classified against the routes of their source (an external port,
or the output port of the NF that emitted them), and go to their target: an NF group (whose
balancer picks the instance, local or on another server), an external port (here, or on the
server that holds it) or a drop with a reason. Every packet is accounted for: it leaves, or it
is dropped with a reason (malformed, no route, queue full, hold overflow, ...).

The switch is one actor: port input, NF outputs, batches from other switches and table updates
all arrive as messages and are handled one at a time, so a table swap is atomic with respect to
the traffic. A bump in the wire carries both directions: a port whose parameters say ``reverse_of: in`` (say,
``out``, the interface towards the servers) feeds what it receives into the policy as if it had
entered at ``in``, tagged ``meta["reverse"] = "in"``; where the policy sends such a packet to an
external port, it leaves through ``in`` instead (on whichever server holds it). So one policy
DAG serves both directions of every flow (stateful NFs see both; conditions may test
``meta.reverse exists``).

NFs marked ``inline`` run inside this loop (no actor hop, no mailbox), through the
same :class:`~e2actors.nf.runner.PipeletRunner` an instance actor uses. For a bytestream NF run by
instance actors the switch reassembles the flows of its local instances once and ships each
instance its stream chunks with the packets that carried them (:mod:`e2actors.switch.stream`);
the packets wait here for the verdicts and leave in their original order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from e2actors.nf.instance import resolve_pipelet
from e2actors.nf.messages import NFBatch, NFOutput, StreamVerdicts, StreamWork
from e2actors.nf.runner import PipeletRunner
from e2actors.nf.stream import CHUNK, GAP
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet
from e2actors.runtime.actor import Actor
from e2actors.runtime.messages import Tick
from e2actors.runtime.ref import ActorRef
from e2actors.switch.balancer import Balancer, Hold
from e2actors.switch.classifier import PENDING, Classifier
from e2actors.switch.hosts import UNKNOWN, HostTracker
from e2actors.switch.messages import Drained, GetSwitchStats, GetTraces, RemoteBatch, SetTable
from e2actors.switch.ports import Port, make_port
from e2actors.switch.stream import StreamDelivery, Work
from e2actors.switch.table import GroupSpec, Member, Route, SwitchTable

__all__ = ["Switch"]

log = logging.getLogger("e2actors.switch")

_HOUSEKEEPING = Tick("switch-housekeeping")


@dataclass(slots=True)
class _PortInput:
    """Packets from a local port (local only: never encoded)."""

    port: str
    pkts: list[Packet]


class _Group:
    __slots__ = ("spec", "balancer", "members", "runner", "sent", "seq", "only", "no_instance", "stream")

    def __init__(self, spec: GroupSpec, balancer: Balancer | None, runner: PipeletRunner | None,
                 stream: StreamDelivery | None = None) -> None:
        self.spec = spec
        # Bytestream NF run by instance actors: this switch reassembles the flows of its local
        # instances and ships them the stream (see e2actors.switch.stream).
        self.stream = stream
        self.balancer = balancer
        self.members: dict[str, Member] = {m.instance: m for m in spec.members}
        self.runner = runner
        self.sent: collections.Counter[str] = collections.Counter()
        self.seq = 0
        # Stateless group with a single running instance (and nothing else in the table): every
        # packet goes there, so the balancer need not look at each one.
        self.only: str | None = None
        # The drop reason when no member can take a packet: every member failed, or none.
        failed = bool(spec.members) and all(m.state == "failed" for m in spec.members)
        self.no_instance = f"nf {spec.nf} failed" if failed else f"no instance of {spec.nf}"
        if spec.affinity == "none" and len(spec.members) == 1 and spec.members[0].state == "running":
            self.only = spec.members[0].instance


class Switch(Actor):
    """One server's switch. Program it with :class:`SetTable`; read it with ``GetSwitchStats``."""

    mailbox_size = 8192
    overflow = "drop"
    urgent = frozenset({SetTable, GetSwitchStats, GetTraces})
    # An instance's output is never dropped here: there is at most one per batch this switch sent
    # (bounded by the instances' queues), and losing one would lose its packets uncounted.
    lossless = frozenset({NFOutput, StreamVerdicts})

    def __init__(self, server: str, manager: ActorRef | None = None, trace_every: int = 0,
                 hold_packets: int = 64, hold_seconds: float = 0.5, max_inflight: int = 64,
                 housekeeping: float = 0.05, live: bool = False) -> None:
        self.server = server
        # Live traffic somewhere in the deployment (AF_PACKET ports, maybe on another server):
        # decisions cannot wait for a host that only comes after the handshake.
        self.live_traffic = live
        self.manager = manager
        self.trace_every = trace_every
        self.hold_packets = hold_packets
        self.hold_seconds = hold_seconds
        self.max_inflight = max_inflight
        self.housekeeping_interval = housekeeping

    def on_start(self) -> None:
        self.table: SwitchTable | None = None
        self.version = 0
        self.ports: dict[str, Port] = {}
        self.groups: dict[str, _Group] = {}
        self.instance_nf: dict[str, str] = {}
        self.routes: dict[str, list[Route]] = {}
        self.classifier: Classifier | None = None
        self.hosts = HostTracker()
        self.drops: collections.Counter[str] = collections.Counter()
        self.route_hits: collections.Counter[str] = collections.Counter()
        self.remote_tx: collections.Counter[str] = collections.Counter()
        self.remote_rx = 0
        self.counters: collections.Counter[str] = collections.Counter()
        self.inflight = 0
        self._room = asyncio.Event()
        self._room.set()
        # Flows waiting for their host (domain conditions): (source, flow key) -> [first time, packets]
        self._pending: dict[tuple[str, Hashable], list] = {}
        self._later: collections.deque[tuple[str, list[Packet], str]] = collections.deque()
        # Packets waiting for an instance that is moving: instance -> packets
        self._held: dict[str, list[Packet]] = {}
        # Batches at local instances not answered yet: instance -> {seq: packets}. When an
        # instance fails for good (or leaves the table) they are counted as lost with it.
        self._outstanding: dict[str, dict[int, int]] = {}
        self._trace_n = 0
        self.traces: collections.deque = collections.deque(maxlen=1000)
        self.live = self.live_traffic
        self.reverse_of: dict[str, str] = {}
        # Bytestream groups with packets released or work to send since the last pump.
        self._dirty: dict[str, _Group] = {}
        self.every(self.housekeeping_interval, _HOUSEKEEPING)

    async def on_stop(self) -> None:
        for p in self.ports.values():
            await p.close()
        for g in self.groups.values():
            if g.runner is not None:
                await g.runner.stop()

    # --- messages -------------------------------------------------------------------------------
    async def on_message(self, msg: Any) -> Any:
        t = type(msg)
        if t is _PortInput:
            await self._ingress(msg.port, msg.pkts)
        elif t is NFOutput:
            await self._from_nf(msg)
        elif t is StreamVerdicts:
            self._from_stream_nf(msg)
        elif t is RemoteBatch:
            await self._from_remote(msg)
        elif t is Tick:
            await self._housekeeping()
        elif t is SetTable:
            v = await self._install(msg.table)
            if self._dirty:
                await self._pump_streams()
            return v
        elif t is GetSwitchStats:
            return self.stats()
        elif t is GetTraces:
            out = list(self.traces)
            if msg.clear:
                self.traces.clear()
            return out
        if self._dirty:
            await self._pump_streams()
        return None

    # --- ingress --------------------------------------------------------------------------------
    def _port_ingress(self, port: str, pkts: list[Packet]) -> None:
        """Called by input ports (outside the actor's task): queue it as a message."""
        if not self._cell.mailbox.put_nowait(_PortInput(port, pkts)):
            self.drops["switch queue full"] += len(pkts)
            self.ports[port].drops["switch queue full"] += len(pkts)

    async def _gate(self) -> None:
        """Replays wait here while too much is in flight (batches at local instances, messages in
        our mailbox). Links to other servers are not waited on: a backed-up link drops and counts
        (see _to_switch), like a full NIC queue; pace a replay with a speed factor instead."""
        while self._busy():
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    def _busy(self) -> bool:
        return (self.inflight >= self.max_inflight or len(self._cell.mailbox) > self.max_inflight
                or any(g.stream is not None and (g.stream.queued > self.max_inflight * 32
                                                 or g.stream.pending > self.max_inflight * 128)
                       for g in self.groups.values()))

    def _update_room(self) -> None:
        if not self._room.is_set() and not self._busy():
            self._room.set()

    async def _ingress(self, port: str, pkts: list[Packet]) -> None:
        good = []
        for p in pkts:
            if p.reason is not None:
                self.drops["malformed"] += 1
            else:
                good.append(p)
        if self.trace_every:
            for p in good:
                self._trace_n += 1
                if self._trace_n % self.trace_every == 0:
                    p.meta["_trace"] = [[time.time(), f"in {self.server}:{port}"]]
        if good:
            rev = self.reverse_of.get(port)
            if rev is not None:
                # The return direction of a bump in the wire: it takes the policy as if it had
                # entered at ``rev`` and leaves through ``rev`` where the policy says "out".
                for p in good:
                    p.meta["reverse"] = rev
                port = rev
            await self._route(f"port:{port}", good)

    # --- classification -------------------------------------------------------------------------
    async def _route(self, source: str, pkts: list[Packet]) -> None:
        routes = self.routes.get(source)
        if not routes:
            self._drop(pkts, "no route")
            return
        cls = self.classifier
        assert cls is not None
        if cls.always(source):  # an unconditional first route: the whole batch takes it
            r = routes[0]
            cls.classify_many(source, pkts)  # counts the hits
            self.route_hits[r.name] += len(pkts)
            await self._deliver(r.target, pkts, r.name)
            return
        domain = cls.needs_domain(source)
        by_route: dict[int, list[Packet]] = {}
        if domain:
            now = time.time()
            idxs = [self._classify_domain(source, pkt, now) for pkt in pkts]
        else:
            idxs = cls.classify_many(source, pkts)
        nomatch = 0
        for pkt, idx in zip(pkts, idxs):
            if idx is None:
                continue  # held until its flow's host is known
            if idx < 0:
                nomatch += 1
                if self.trace_every:
                    self._finish_traces([pkt], "drop no route")
                continue
            lst = by_route.get(idx)
            if lst is None:
                by_route[idx] = [pkt]
            else:
                lst.append(pkt)
        if nomatch:
            self.drops["no route"] += nomatch
        if len(by_route) == 1 and not self._later:  # the common case: one target for the batch
            idx, lst = by_route.popitem()
            r = routes[idx]
            self.route_hits[r.name] += len(lst)
            await self._deliver(r.target, lst, r.name)
            return
        # Flows whose host just became known go first: their held packets came before any later
        # packet of theirs in this batch.
        while self._later:
            t, lst, n = self._later.popleft()
            await self._deliver(t, lst, n)
        for idx, lst in by_route.items():
            r = routes[idx]
            self.route_hits[r.name] += len(lst)
            await self._deliver(r.target, lst, r.name)

    def _classify_domain(self, source: str, pkt: Packet, now: float) -> int | None:
        """Classify where a ``domain`` test may matter: hold the flow while its host is unknown."""
        cls = self.classifier
        assert cls is not None
        key = (source, pkt.flow_key)
        pend = self._pending.get(key)
        host = self.hosts.lookup(pkt, now)
        if pend is not None:
            pend[1].append(pkt)
            if host is UNKNOWN and len(pend[1]) < self.hold_packets:
                return None
            if host is UNKNOWN:
                self.hosts.give_up(pkt, now)
                host = None
                self.counters["domain hold bound hit"] += 1
            del self._pending[key]
            self._release_pending(source, pend[1], host)
            return None
        if host is UNKNOWN:
            idx = cls.try_classify(source, pkt, None)
            if idx != PENDING:
                return idx
            if self.live and pkt.payload_len <= 0:
                # Live traffic: the host cannot be known before the handshake completes, so
                # payload-less packets go the host-less way (see the module docs).
                return cls.classify(source, pkt, None)
            self._pending[key] = [now, [pkt]]
            self.counters["flows held for host"] += 1
            return None
        return cls.classify(source, pkt, host)  # type: ignore[arg-type]

    def _release_pending(self, source: str, pkts: list[Packet], host: str | None) -> None:
        cls = self.classifier
        assert cls is not None
        routes = self.routes[source]
        decided: list[tuple[str, list[Packet], str]] = []
        for pkt in pkts:
            idx = cls.classify(source, pkt, host)
            if idx < 0:
                self._drop([pkt], "no route")
                continue
            r = routes[idx]
            self.route_hits[r.name] += 1
            if decided and decided[-1][0] == r.target:
                decided[-1][1].append(pkt)
            else:
                decided.append((r.target, [pkt], r.name))
        # Delivered by the caller (_route or housekeeping) once it is done with its own batch.
        self._later.extend(decided)

    # --- delivery -------------------------------------------------------------------------------
    async def _deliver(self, target: str, pkts: list[Packet], why: str = "") -> None:
        kind, _, name = target.partition(":")
        if self.trace_every:
            for p in pkts:
                tr = p._meta.get("_trace") if p._meta else None
                if tr is not None:
                    tr.append([time.time(), f"route {why} -> {target}"])
        if kind == "nf":
            await self._to_group(name, pkts)
        elif kind == "port":
            self._to_port(name, pkts)
        elif target == "drop":
            self._drop(pkts, f"dropped by route {why}" if why else "dropped by policy")
        else:
            self._drop(pkts, f"bad target {target}")

    async def _to_group(self, nf: str, pkts: list[Packet]) -> None:
        g = self.groups.get(nf)
        if g is None:
            self._drop(pkts, f"unknown nf {nf}")
            return
        if g.runner is not None:
            await self._run_inline(nf, g, pkts)
            return
        if g.only is not None:  # affinity none, one instance: no per-packet choice to make
            self._to_instance(g, g.only, pkts)
            return
        bal = g.balancer
        assert bal is not None
        now = time.time()
        per: dict[str, list[Packet]] = {}
        for pkt in pkts:
            inst = bal.pick(pkt, now)
            if inst is None:
                self._drop([pkt], g.no_instance)
                continue
            if type(inst) is Hold:
                self._hold(inst.instance, pkt)
                continue
            lst = per.get(inst)
            if lst is None:
                per[inst] = [pkt]
            else:
                lst.append(pkt)
        for inst, lst in per.items():
            self._to_instance(g, inst, lst)

    def _to_instance(self, g: _Group, inst: str, pkts: list[Packet]) -> None:
        m = g.members.get(inst)
        if m is None:
            self._drop(pkts, f"unknown instance {inst}")
            return
        if self.trace_every:
            for p in pkts:
                tr = p._meta.get("_trace") if p._meta else None
                if tr is not None:
                    tr.append([time.time(), f"nf {inst} on {m.server}"])
        if m.server != self.server:
            self._to_switch(m.server, RemoteBatch(f"inst:{inst}", Batch(pkts)))
            return
        if m.ref is None:
            self._drop(pkts, f"instance {inst} has no actor")
            return
        if g.stream is not None:
            pkts = self._to_stream(g, inst, pkts)
            if not pkts:
                return
        g.seq += 1
        g.sent[inst] += len(pkts)
        if self.send(m.ref, NFBatch(Batch(pkts), g.seq)):
            self.inflight += 1
            out = self._outstanding.get(inst)
            if out is None:
                out = self._outstanding[inst] = {}
            out[g.seq] = len(pkts)
        else:
            self._drop(pkts, "queue full")

    def _to_stream(self, g: _Group, inst: str, pkts: list[Packet]) -> list[Packet]:
        """Feed the TCP packets to the group's reassembly (they wait here for the instance's
        verdicts); return the others, which go to the instance as packets."""
        tcp = [p for p in pkts if p.proto == 6 and p.l4_offset >= 0]
        if not tcp:
            return pkts
        g.sent[inst] += len(tcp)
        refused = g.stream.push(inst, tcp, time.time())  # type: ignore[union-attr]
        if refused:
            self._drop(refused, "queue full")
        self._dirty[g.spec.nf] = g
        return [p for p in pkts if not (p.proto == 6 and p.l4_offset >= 0)] if len(tcp) < len(pkts) else []

    async def _pump_streams(self) -> None:
        """Send bytestream work to the instances and route what their verdicts released; again
        while routing feeds another bytestream group."""
        for _ in range(100):
            if not self._dirty:
                return
            dirty = self._dirty
            self._dirty = {}
            for nf, g in dirty.items():
                st = g.stream
                if st is None:
                    continue
                out, nf_drops, ours = st.take_released()
                for reason, lst in ours.items():
                    self._drop(lst, reason)
                if nf_drops:
                    self.counters[f"dropped by {nf}"] += sum(len(x) for x in nf_drops.values())
                    if self.trace_every:
                        for reason, lst in nf_drops.items():
                            self._finish_traces(lst, f"drop by {nf}: {reason}")
                for port, lst in out.items():
                    await self._route(f"nf:{nf}.{port}", lst)
                hold = {m.instance for m in g.members.values() if m.state == "moving"}
                for w in st.take_work(hold):  # (with the accounting of what just left)
                    self._send_work(g, w)

    def _send_work(self, g: _Group, w: Work) -> None:
        st = g.stream
        assert st is not None
        m = g.members.get(w.instance)
        # (An instance that moved to another server still gets the work of the flows reassembled
        # here, and answers us: reply_to.)
        if m is None or m.ref is None or m.state in ("failed", "stopped"):
            why = f"lost with failed instance {w.instance}" if m is not None and m.state == "failed" \
                else f"instance {w.instance} gone"
            st.lost(w, why)
            self._dirty[g.spec.nf] = g
            return
        if m.server != self.server:
            # The instance moved away: its flows live on at its new server's switch, which tells
            # it of their openings and ends; here only the bytes still held go to it.
            for j in w.jobs:
                if j.kind != CHUNK and j.kind != GAP:
                    j.done = True
            w.jobs = [j for j in w.jobs if not j.done]
        ask = w.seq >= 0 and w.needs_answer
        msg = StreamWork(w.seq if ask else -1, w.events(), w.packets, w.nbytes, w.released, w.drops, self.ref)
        w.ref = m.ref
        if self.send(m.ref, msg):
            if ask:
                st.sent(w)
                self.inflight += 1
        else:
            st.refused(w)  # retried by housekeeping, not in a loop here

    def _stale_stream_work(self, g: _Group) -> None:
        """Works out at an actor that was replaced (a move, an upgrade) and stopped before it
        answered will never be answered: give them up, counted."""
        st = g.stream
        assert st is not None
        for inst in [i for i, o in st._outstanding.items() if o]:
            m = g.members.get(inst)
            cur = m.ref if m is not None else None
            here = self.node.address
            n = st.stale(inst, lambda ref: ref == cur or ref.node != here or self.node.is_alive(ref))
            if n:
                self.inflight = max(0, self.inflight - n)
                self._dirty[g.spec.nf] = g
                self._update_room()

    def _from_stream_nf(self, msg: StreamVerdicts) -> None:
        if type(msg.instance) is not str or type(msg.seq) is not int:
            self.counters["malformed stream answers"] += 1  # (from a bad peer: nothing to match)
            return
        nf = self.instance_nf.get(msg.instance)
        g = self.groups.get(nf) if nf else None
        if g is None or g.stream is None:
            return
        if g.stream.answer(msg.instance, msg.seq, msg.answers):
            self.inflight = max(0, self.inflight - 1)
            self._update_room()
            self._dirty[g.spec.nf] = g

    async def _run_inline(self, nf: str, g: _Group, pkts: list[Packet]) -> None:
        runner = g.runner
        assert runner is not None
        g.sent[nf] += len(pkts)
        try:
            out = await runner.run(Batch(pkts))
        except Exception as exc:  # an inline NF that raises loses its batch, counted, never the switch
            self._drop(pkts, f"nf error in {nf}: {type(exc).__name__}")
            log.warning("inline NF %s raised %r", nf, exc)
            return
        await self._route_outputs(nf, out)

    async def _route_outputs(self, nf: str, out: dict[str, list[Packet]]) -> None:
        for port, lst in out.items():
            if lst:
                await self._route(f"nf:{nf}.{port}", lst)

    def _to_port(self, name: str, pkts: list[Packet]) -> None:
        if any(p._meta and "reverse" in p._meta for p in pkts):
            by_port: dict[str, list[Packet]] = {}
            for p in pkts:
                dest = p._meta.get("reverse", name) if p._meta else name
                by_port.setdefault(dest, []).append(p)
            for dest, lst in by_port.items():
                self._out_port(dest, lst)
            return
        self._out_port(name, pkts)

    def _out_port(self, name: str, pkts: list[Packet]) -> None:
        port = self.ports.get(name)
        if self.trace_every:
            self._finish_traces(pkts, f"out {self.server}:{name}")
        if port is not None:
            port.send(pkts)
            return
        server = self.table.port_servers.get(name) if self.table else None
        if server is None or server == self.server:
            self._drop(pkts, f"no port {name}")
            return
        self._to_switch(server, RemoteBatch(f"port:{name}", Batch(pkts)))

    def _to_switch(self, server: str, rb: RemoteBatch) -> None:
        ref = self.table.switches.get(server) if self.table else None
        if ref is None:
            self._drop(rb.batch.packets, f"no switch for server {server}")
            return
        n = len(rb.batch.packets)
        if self.node.congested(ref):
            # The link to that server is backed up: drop here (counted) rather than let the
            # backlog grow without bound and delay everything behind it, tables included.
            self._drop(rb.batch.packets, f"link to {server} congested")
            return
        try:
            ok = self.send(ref, rb)
        except Exception as exc:
            log.warning("switch %s: cannot reach %s: %r", self.server, server, exc)
            ok = False
        if ok:
            self.remote_tx[server] += n
        else:
            self._drop(rb.batch.packets, f"remote {server} unreachable")

    def _hold(self, inst: str, pkt: Packet) -> None:
        lst = self._held.setdefault(inst, [])
        if len(lst) >= 100_000:
            self._drop([pkt], "hold overflow")
        else:
            lst.append(pkt)

    def _drop(self, pkts: list[Packet], reason: str) -> None:
        self.drops[reason] += len(pkts)
        if self.trace_every:
            self._finish_traces(pkts, f"drop {reason}")

    def _finish_traces(self, pkts: list[Packet], last: str) -> None:
        for p in pkts:
            tr = p._meta.pop("_trace", None) if p._meta else None
            if tr is not None:
                tr.append([time.time(), last])
                self.traces.append({"flow": _flow_text(p), "meta": dict(p._meta or {}), "hops": tr})

    # --- from NF instances and other switches ---------------------------------------------------
    async def _from_nf(self, msg: NFOutput) -> None:
        if msg.seq >= 0:
            self.inflight = max(0, self.inflight - 1)
            self._update_room()
            out = self._outstanding.get(msg.instance)
            if out is not None:
                out.pop(msg.seq, None)
        nf = self.instance_nf.get(msg.instance)
        if msg.lost:
            self.drops[f"nf error in {nf or msg.instance}"] += msg.lost
        if msg.dropped:
            self.counters[f"dropped by {nf or msg.instance}"] += msg.dropped
        if nf is None:
            n = sum(len(b.packets) for _p, b in msg.outputs)
            if n:
                self._drop([p for _port, b in msg.outputs for p in b.packets], f"output of unknown instance {msg.instance}")
            return
        for port, batch in msg.outputs:
            await self._route(f"nf:{nf}.{port}", batch.packets)

    async def _from_remote(self, msg: RemoteBatch) -> None:
        pkts = msg.batch.packets
        self.remote_rx += len(pkts)
        kind, _, name = msg.target.partition(":")
        if kind == "inst":
            nf = self.instance_nf.get(name)
            g = self.groups.get(nf) if nf else None
            if g is None:
                self._drop(pkts, f"unknown instance {name}")
                return
            if g.members.get(name) is not None and g.members[name].state == "moving":
                for p in pkts:
                    self._hold(name, p)
                return
            self._to_instance(g, name, pkts)
        elif kind == "port":
            self._to_port(name, pkts)
        elif kind == "nf":
            await self._to_group(name, pkts)
        else:
            self._drop(pkts, f"bad remote target {msg.target}")

    # --- tables ---------------------------------------------------------------------------------
    async def _install(self, table: SwitchTable) -> int:
        if self.table is not None and table.version <= self.version:
            return self.version  # an old or repeated table: keep ours
        # Build everything first, then swap: nothing half-installed is ever seen by traffic.
        new_ports: dict[str, Port] = {}
        opened: list[Port] = []
        for spec in table.ports:
            old = self.ports.get(spec.name)
            if old is not None and old.kind == spec.kind:
                new_ports[spec.name] = old
                continue
            p = make_port(spec.name, spec.kind, dict(spec.params))
            new_ports[spec.name] = p
            opened.append(p)
        groups: dict[str, _Group] = {}
        for gs in table.groups:
            old_g = self.groups.get(gs.nf)
            if gs.inline:
                if old_g is not None and old_g.runner is not None and old_g.spec.pipelet == gs.pipelet \
                        and old_g.spec.config == gs.config:
                    g = _Group(gs, None, old_g.runner)
                else:
                    cls = resolve_pipelet(gs.pipelet, self.node.allow_spawn)
                    p = cls()
                    p.name = f"{gs.nf}@{self.server}"
                    runner = PipeletRunner(p, clock="wall")
                    await runner.start(dict(gs.config))
                    g = _Group(gs, None, runner)
            else:
                stream = None
                if gs.input == "bytestream":
                    # The reassembly state outlives table changes (scaling, moves on this server).
                    stream = old_g.stream if old_g is not None and old_g.stream is not None \
                        else StreamDelivery(gs.nf, gs.ports)
                if old_g is not None and old_g.balancer is not None:
                    old_g.balancer.update(gs.members, time.time())  # migration avoidance keeps live flows
                    g = _Group(gs, old_g.balancer, None, stream)
                    g.sent = old_g.sent
                    g.seq = old_g.seq
                else:
                    g = _Group(gs, Balancer.for_group(gs), None, stream)
            groups[gs.nf] = g
        classifier = Classifier(table.routes)
        routes: dict[str, list[Route]] = {}
        for r in table.routes:
            routes.setdefault(r.source, []).append(r)
        for nf, old_g in self.groups.items():
            if old_g.stream is not None and (groups.get(nf) is None or groups[nf].stream is not old_g.stream):
                # A bytestream NF left the table: what waits in its reassembly is dropped, counted.
                for inst in {*old_g.stream._outstanding, *old_g.stream._todo}:
                    self.inflight = max(0, self.inflight - len(old_g.stream._outstanding.get(inst, ())))
                    old_g.stream.fail(inst, f"nf {nf} removed")
                old_g.stream.flush(time.time())
                for w in old_g.stream.take_work():
                    old_g.stream.lost(w, f"nf {nf} removed")
                out, nf_drops, ours = old_g.stream.take_released()
                for lst in [*out.values(), *nf_drops.values(), *ours.values()]:
                    self._drop(lst, f"nf {nf} removed")
        # --- swap
        for name, p in self.ports.items():
            if new_ports.get(name) is not p:
                await p.close()
        for nf, g in self.groups.items():
            if g.runner is not None and groups.get(nf, None) is None or (
                    g.runner is not None and groups[nf].runner is not g.runner):
                await g.runner.stop()  # type: ignore[union-attr]
        self.ports = new_ports
        self.groups = groups
        self.instance_nf = {m.instance: gs.nf for gs in table.groups for m in gs.members}
        self.classifier = classifier
        self.routes = routes
        self.table = table
        self.version = table.version
        self.live = self.live_traffic or any(p.kind == "afpacket" for p in new_ports.values())
        self.reverse_of = {spec.name: str(spec.params["reverse_of"]) for spec in table.ports
                           if spec.params.get("reverse_of")}
        for p in opened:
            await p.open(self._port_ingress, self._gate)
        await self._release_held()
        self._forget_gone()
        log.debug("switch %s: table v%d installed", self.server, table.version)
        return table.version

    async def _release_held(self) -> None:
        for inst in list(self._held):
            nf = self.instance_nf.get(inst)
            g = self.groups.get(nf) if nf else None
            m = g.members.get(inst) if g else None
            if g is None or m is None:
                self._drop(self._held.pop(inst), f"held for vanished instance {inst}")
            elif m.state != "moving":
                self._to_instance(g, inst, self._held.pop(inst))

    def _forget_gone(self) -> None:
        """Batches outstanding at instances that failed or left the table will not come back:
        count their packets as lost and stop waiting for them."""
        for inst in list(self._outstanding):
            nf = self.instance_nf.get(inst)
            g = self.groups.get(nf) if nf else None
            m = g.members.get(inst) if g else None
            if m is not None and m.state not in ("failed", "stopped"):
                continue
            out = self._outstanding.pop(inst)
            if out:
                self.drops[f"lost with failed instance {inst}"] += sum(out.values())
                self.inflight = max(0, self.inflight - len(out))
        # Stream work at such instances: resolved here (its packets dropped, counted).
        for nf, g in self.groups.items():
            st = g.stream
            if st is None:
                continue
            for inst in {*st._outstanding, *st._todo}:
                m = g.members.get(inst)
                if m is not None and m.state not in ("failed", "stopped"):
                    continue
                waiting = len(st._outstanding.get(inst, ()))
                st.fail(inst, f"lost with failed instance {inst}" if m is not None else f"instance {inst} gone")
                self.inflight = max(0, self.inflight - waiting)
                self._dirty[nf] = g
        self._update_room()

    # --- housekeeping ---------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        now = time.time()
        for key, (t0, pkts) in list(self._pending.items()):
            if now - t0 >= self.hold_seconds:
                del self._pending[key]
                self.hosts.give_up(pkts[0], now)
                self.counters["domain hold timeouts"] += 1
                self._release_pending(key[0], pkts, None)
        while self._later:
            t, lst, n = self._later.popleft()
            await self._deliver(t, lst, n)
        self.hosts.expire(now)
        for nf, g in self.groups.items():
            if g.runner is not None:
                await self._route_outputs(nf, await g.runner.tick())
            elif g.balancer is not None:
                if g.stream is not None:
                    g.stream.advance(now)  # gap and idle timeouts of the reassembled flows
                    self._stale_stream_work(g)
                    if g.stream.has_work or g.stream.driver._released:
                        self._dirty[nf] = g
                g.balancer.tick(now)
                for inst in g.balancer.take_drained():  # each drain is reported once
                    if self.manager is not None:
                        self.send(self.manager, Drained(nf, inst, self.server))
        self._update_room()

    # --- introspection --------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing in flight, held or waiting, and every input port is done."""
        return (self.inflight == 0 and not self._pending and not any(self._held.values())
                and all(p.done for p in self.ports.values())
                and all(g.runner is None or g.runner.held == 0 for g in self.groups.values())
                and all(g.stream is None or (g.stream.pending == 0 and not g.stream.awaiting
                                             and not g.stream.has_work)
                        for g in self.groups.values()))

    def stats(self) -> dict[str, Any]:
        return {
            "server": self.server, "version": self.version, "idle": self.idle, "inflight": self.inflight,
            "ports": {n: p.stats() for n, p in self.ports.items()},
            "drops": dict(self.drops), "routes": dict(self.route_hits), "counters": dict(self.counters),
            "groups": {nf: {"sent": dict(g.sent), "inline": g.runner is not None,
                            "balancer": g.balancer.stats() if g.balancer is not None else None,
                            "runner": g.runner.stats.as_dict() if g.runner is not None else None,
                            "stream": g.stream.stats() if g.stream is not None else None}
                       for nf, g in self.groups.items()},
            "remote_tx": dict(self.remote_tx), "remote_rx": self.remote_rx,
            "held": {k: len(v) for k, v in self._held.items() if v},
            "pending_domain_flows": len(self._pending), "hosts_learned": self.hosts.learned,
            "classifier": self.classifier.stats() if self.classifier is not None else None,
            "mailbox": {"depth": len(self._cell.mailbox), "dropped": self._cell.mailbox.dropped},
        }


def _flow_text(p: Packet) -> str:
    if p.proto < 0:
        return "non-ip"
    return f"{p.proto} {p.src_str}:{p.sport} -> {p.dst_str}:{p.dport}"
