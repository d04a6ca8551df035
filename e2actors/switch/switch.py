"""``Switch``: the per-server dataplane actor (E2D in the paper).

Packets enter from ports, are classified against the routes of their source (an external port,
or the output port of the NF that emitted them), and go to their target: an NF group (whose
balancer picks the instance, local or on another server), an external port (here, or on the
server that holds it) or a drop with a reason. Every packet is accounted for: it leaves, or it
is dropped with a reason (malformed, no route, queue full, hold overflow, ...).

This actor is a thin shell: the decisions are :class:`~e2actors.switch.dataplane.Dataplane`'s,
a synchronous core that takes batches and says what goes where. The shell feeds it every data
message waiting in the mailbox (port input, NF outputs, batches from other switches, stream
verdicts, credits) in one turn, then carries out what the core decided — one batch per
destination — so small batches bound for the same place within a turn travel together. Table
updates are urgent messages handled between turns, so a table swap is atomic with respect to
the traffic.

Backpressure is end to end (:mod:`e2actors.switch.credits`): each input port may have a window
of packets in the deployment; a replayed capture waits for credits (``--speed 0`` is lossless,
paced by the slowest consumer), a live interface stops reading and the kernel drops at its ring.

A bump in the wire carries both directions: a port whose parameters say ``reverse_of: in`` (say,
``out``, the interface towards the servers) feeds what it receives into the policy as if it had
entered at ``in``, tagged ``meta["reverse"] = "in"``; where the policy sends such a packet to an
external port, it leaves through ``in`` instead (on whichever server holds it). So one policy
DAG serves both directions of every flow (stateful NFs see both; conditions may test
``meta.reverse exists``).

NFs marked ``inline`` run inside this actor (no actor hop, no mailbox), through the
same :class:`~e2actors.nf.runner.PipeletRunner` an instance actor uses. For a bytestream NF run by
instance actors the switch reassembles the flows of its local instances once and ships each
instance its stream chunks with the packets that carried them (:mod:`e2actors.switch.stream`);
the packets wait here for the verdicts and leave in their original order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from e2actors.errors import E2Error
from e2actors.nf.instance import resolve_pipelet
from e2actors.nf.messages import InputDone, NFOutput, StreamVerdicts
from e2actors.nf.runner import PipeletRunner
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet
from e2actors.runtime.actor import Actor
from e2actors.runtime.messages import Tick
from e2actors.runtime.ref import ActorRef
from e2actors.switch.dataplane import Dataplane, Group
from e2actors.switch.messages import (CloseInputs, Credit, GetSwitchStats, GetTraces, RemoteBatch, SetTable,
                                     SwitchLoad)
from e2actors.switch.portkinds import make_port
from e2actors.switch.ports import Port
from e2actors.switch.table import SwitchTable

__all__ = ["Switch"]

log = logging.getLogger("e2actors.switch")

_HOUSEKEEPING = Tick("switch-housekeeping")


@dataclass(slots=True)
class _PortInput:
    """Packets from a local port (local only: never encoded)."""

    port: str
    pkts: list[Packet]


_DATA = frozenset({_PortInput, NFOutput, StreamVerdicts, RemoteBatch, Credit})


class Switch(Actor):
    """One server's switch. Program it with :class:`SetTable`; read it with ``GetSwitchStats``."""

    mailbox_size = 65536
    overflow = "drop"
    urgent = frozenset({SetTable, GetSwitchStats, GetTraces, Credit, CloseInputs, InputDone})
    # Never dropped for lack of room: an instance's output (at most one per batch this switch
    # sent, bounded by its window) and port input (bounded by the port's credit window) — losing
    # one would lose its packets uncounted and their credits with them.
    lossless = frozenset({NFOutput, StreamVerdicts, _PortInput})

    def __init__(self, server: str, manager: ActorRef | None = None, trace_every: int = 0,
                 hold_packets: int = 64, hold_seconds: float = 0.5, max_inflight: int = 2,
                 housekeeping: float = 0.05, live: bool = False, credit_timeout: float = 10.0,
                 stall_timeout: float = 5.0, report_interval: float = 0.25,
                 link_limit: int = 256 * 1024 * 1024) -> None:
        self.server = server
        self.manager = manager
        self.trace_every = trace_every
        self.hold_packets = hold_packets
        self.hold_seconds = hold_seconds
        #: Batches out at one instance at a time (the rest waits here and goes as one batch).
        self.window = max(1, int(max_inflight))
        self.housekeeping_interval = housekeeping
        self.live_traffic = live
        #: Seconds an input port waits without any credit coming back before writing them off.
        self.credit_timeout = credit_timeout
        self.stall_timeout = stall_timeout
        self.report_interval = report_interval
        #: Bytes queued on the link to another server beyond which a batch is dropped ("link to X
        #: congested"); credits keep traffic far below it: it only guards against a stuck link.
        self.link_limit = link_limit

    def on_start(self) -> None:
        self.dp = Dataplane(self.server, trace_every=self.trace_every, hold_packets=self.hold_packets,
                            hold_seconds=self.hold_seconds, live=self.live_traffic, window=self.window,
                            stall_timeout=self.stall_timeout)
        self.dp.manager = self.manager
        self.dp.self_ref = self.ref
        self.ports: dict[str, Port] = {}
        self._port_params: dict[str, dict] = {}  # what each port was made with
        self._paused: set[str] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._returned = 0
        self._input_done = False  # (told by the manager: InputDone)
        self._last_report = 0.0
        self._reported_congestion: dict[str, int] = {}
        self.every(self.housekeeping_interval, _HOUSEKEEPING)

    async def on_stop(self) -> None:
        for p in self.ports.values():
            await p.close()
        for g in self.dp.groups.values():
            if g.runner is not None:
                await g.runner.stop()

    # --- views the tests and tools use -----------------------------------------------------------
    @property
    def groups(self) -> dict[str, Group]:
        return self.dp.groups

    @property
    def table(self) -> SwitchTable | None:
        return self.dp.table

    @property
    def version(self) -> int:
        return self.dp.version

    # --- messages -------------------------------------------------------------------------------
    async def on_message(self, msg: Any) -> Any:
        t = type(msg)
        if t in _DATA:
            now = time.time()
            self._feed(msg, now)
            for _ in range(256):  # the rest of what waits, in the same turn (bounded)
                nxt = self.next_queued(_DATA)
                if nxt is None:
                    break
                self._feed(nxt, now)
            await self._flush(now)
            return None
        if t is Tick:
            await self._housekeeping()
            return None
        if t is SetTable:
            v = await self._install(msg.table)
            await self._flush(time.time())
            return v
        if t is GetSwitchStats:
            return self.stats()
        if t is InputDone:
            self._input_done = True
            self.dp.inputs_done = True
            return None
        if t is CloseInputs:
            for p in self.ports.values():
                if p.is_input and not p.done:
                    p.stop_input()
            return True
        if t is GetTraces:
            out = list(self.dp.traces)
            if msg.clear:
                self.dp.traces.clear()
            return out
        return None

    def _feed(self, msg: Any, now: float) -> None:
        dp = self.dp
        t = type(msg)
        if t is _PortInput:
            dp.ingress(msg.port, msg.pkts, now)
        elif t is NFOutput:
            dp.from_instance(msg.instance, msg.seq, msg.outputs, msg.dropped, msg.lost, msg.finished, now)
        elif t is RemoteBatch:
            dp.from_remote(msg.target, msg.batch.packets, now)
        elif t is StreamVerdicts:
            dp.stream_answer(msg.instance, msg.seq, msg.answers)
        elif t is Credit:
            dp.credit(msg.credits)

    async def _flush(self, now: float) -> None:
        """Carry out what the core decided; run inline NFs and feed back what they emit."""
        dp = self.dp
        for _ in range(100):
            sends, ports, inline = dp.take(now)
            for ref, msg, ctx in sends:
                ok = self._send(ref, msg, ctx)
                if ok is None:
                    continue
                if ctx is not None or not ok:
                    dp.settle(msg, ctx, ok, not ok and ref.node == self.node.address and not self.node.is_alive(ref))
            for name, pkts in ports.items():
                self.ports[name].send(pkts)
            if not inline:
                break
            for nf, pkts in inline.items():
                g = dp.groups.get(nf)
                runner = g.runner if g is not None else None
                if runner is None:
                    dp.drop(pkts, f"unknown nf {nf}")
                    continue
                try:
                    out = await runner.run(Batch(pkts))
                except Exception as exc:  # an inline NF that raises loses its batch, counted, never the switch
                    dp.inline_failed(nf, pkts, exc, runner.take_finished())
                    log.warning("inline NF %s raised %r", nf, exc)
                    continue
                dp.from_inline(nf, out, runner.take_finished(), now)
        self._wake()

    def _send(self, ref: ActorRef, msg: Any, ctx: Any) -> bool | None:
        """Send one decided message. None: handled here (dropped for a stuck link)."""
        if type(msg) is RemoteBatch and self.node.link_backlog(ref) > self.link_limit:
            # The link to that server has not drained for a long time (credits keep live traffic
            # far below this): drop here, counted, rather than queue without bound.
            self.dp.remote_tx[ctx] -= len(msg.batch.packets)
            self.dp.drop(msg.batch.packets, f"link to {ctx} congested")
            return None
        try:
            return self.send(ref, msg)
        except E2Error as exc:
            log.warning("switch %s: cannot send to %s: %r", self.server, ref, exc)
            return False

    # --- ingress and credits ----------------------------------------------------------------------
    def _port_ingress(self, port: str, pkts: list[Packet]) -> None:
        """Called by input ports as they read (outside the actor's task): the packets take the
        port's credit now, and wait in the mailbox for the next turn."""
        dp = self.dp
        o = dp.port_origin.get(port)
        p = self.ports.get(port)
        if o and p is not None and p.kind == "memory":
            # Injected by code, which cannot be made to wait: beyond the window it is dropped
            # at the port, before any work was spent on it (a live input's ring overflow).
            room = dp.credits.room(o)
            if room < len(pkts):
                p.drops["ingress window full"] += len(pkts) - room
                pkts = pkts[:room]
                if not pkts:
                    return
        dp.admit(port, pkts)
        self.node.send(self.ref, _PortInput(port, pkts))
        if o and dp.credits.room(o) <= 0 and p is not None and p.pausable and port not in self._paused:
            # A live port stops reading: the kernel drops at its ring, as a full NIC would.
            self._paused.add(port)
            p.pause()

    async def _gate(self, port: str) -> None:
        """A replayed capture waits here before each batch until its origin has credit. Nothing
        waits forever: without any credit coming back for ``credit_timeout`` seconds the credits
        are written off (counted, logged) and the replay goes on."""
        dp = self.dp
        o = dp.port_origin.get(port)
        if not o:
            return
        mark = dp.credits.returned
        t_mark = time.monotonic()
        while dp.credits.room(o) <= 0:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            if dp.credits.returned != mark:
                mark = dp.credits.returned
                t_mark = time.monotonic()
            elif time.monotonic() - t_mark > self.credit_timeout:
                n = dp.credits.write_off(o)
                dp.counters["credits written off"] += n
                log.warning("switch %s: port %s got no credit back for %.0fs: %d packets presumed lost",
                            self.server, port, self.credit_timeout, n)

    def _wake(self) -> None:
        dp = self.dp
        if dp.credits.returned == self._returned:
            return
        self._returned = dp.credits.returned
        self._room.set()
        if self._paused:
            for name in list(self._paused):
                o = dp.port_origin.get(name)
                p = self.ports.get(name)
                if p is None:
                    self._paused.discard(name)
                elif not o or dp.credits.room(o) > 0:
                    self._paused.discard(name)
                    p.resume()

    # --- tables ---------------------------------------------------------------------------------
    async def _install(self, table: SwitchTable) -> int:
        dp = self.dp
        if dp.table is not None and table.version <= dp.version:
            return dp.version  # an old or repeated table: keep ours
        # Build everything first, then swap: nothing half-installed is ever seen by traffic.
        new_ports: dict[str, Port] = {}
        new_params = dict(self._port_params)
        opened: list[Port] = []
        for spec in table.ports:
            old = self.ports.get(spec.name)
            if old is not None and old.kind == spec.kind and self._port_params.get(spec.name) == spec.params:
                new_ports[spec.name] = old
                continue
            if old is not None and old.kind == spec.kind and old.retune(self._port_params.get(spec.name, {}),
                                                                         dict(spec.params)):
                # (changed only in what the port takes as it runs: a replay goes on, not over)
                new_ports[spec.name] = old
                new_params[spec.name] = dict(spec.params)
                continue
            params = dict(spec.params)
            confine = getattr(self.node, "confine", None)
            if confine is not None and spec.kind == "pcap-out" and params.get("path"):
                # A port writes files like an NF does: inside the node's data directory (relative
                # paths from it), so a table cannot make an agent write anywhere else.
                params["path"] = confine.path(str(params["path"]), f"port {spec.name} path")
            p = make_port(spec.name, spec.kind, params)
            new_ports[spec.name] = p
            opened.append(p)
            new_params[spec.name] = dict(spec.params)
        runners: dict[str, PipeletRunner] = {}
        for gs in table.groups:
            if not gs.inline:
                continue
            old_g = dp.groups.get(gs.nf)
            if old_g is not None and old_g.runner is not None and old_g.spec.pipelet == gs.pipelet \
                    and old_g.spec.config == gs.config:
                runners[gs.nf] = old_g.runner
                continue
            cls = resolve_pipelet(gs.pipelet, self.node.allow_spawn)
            p = cls()
            p.name = f"{gs.nf}@{self.server}"
            runner = PipeletRunner(p, clock="replay" if table.clock == "packet" else "wall")
            await runner.start(dict(gs.config))
            runners[gs.nf] = runner
        stream_options: dict[str, dict[str, Any]] = {}
        for gs in table.groups:
            if gs.input == "bytestream" and not gs.inline and gs.nf not in dp.groups:
                try:
                    stream_options[gs.nf] = resolve_pipelet(gs.pipelet, self.node.allow_spawn).reassembly_options(
                        dict(gs.config))
                except Exception as exc:  # (the instances say why they cannot load it)
                    log.warning("switch %s: reassembly options of %s: %r", self.server, gs.nf, exc)
        old_runners = [g.runner for g in dp.groups.values() if g.runner is not None]
        # --- swap
        for name, p in self.ports.items():
            if new_ports.get(name) is not p:
                await p.close()
                self._paused.discard(name)
        dp.install(table, runners, time.time(), stream_options)
        for r in old_runners:
            if all(r is not n for n in runners.values()):
                await r.stop()
        self.ports = new_ports
        self._port_params = {n: v for n, v in new_params.items() if n in new_ports}
        for p in opened:
            await p.open(self._port_ingress, functools.partial(self._gate, p.name))
        log.debug("switch %s: table v%d installed", self.server, table.version)
        return table.version

    # --- housekeeping ---------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        now = time.time()
        dp = self.dp
        node = self.node
        here = node.address

        def alive(ref: ActorRef) -> bool:
            return ref.node != here or node.is_alive(ref)

        inputs = [p for p in self.ports.values() if p.is_input]
        dp.inputs_done = self._input_done or (bool(inputs) and all(p.done for p in inputs))
        for ref, msg, _ctx in dp.housekeeping(now, alive):
            self._send(ref, msg, None)
        for nf, g in list(dp.groups.items()):
            if g.runner is not None:
                out = await g.runner.tick()
                dp.from_inline(nf, out, g.runner.take_finished(), now)
        await self._flush(now)
        if self.manager is not None and now - self._last_report >= self.report_interval:
            self._last_report = now
            self._report()

    def _report(self) -> None:
        dp = self.dp
        cong = []
        for inst, n in dp.congestion.items():
            d = n - self._reported_congestion.get(inst, 0)
            if d:
                cong.append((inst, d))
                self._reported_congestion[inst] = n
        backlog = tuple(dp.backlog().items())
        if cong or backlog:
            self.send(self.manager, SwitchLoad(self.server, backlog, tuple(cong)))  # type: ignore[arg-type]

    # --- introspection --------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing in flight, held or waiting, and every input port is done."""
        return self.dp.idle and all(p.done for p in self.ports.values())

    def stats(self) -> dict[str, Any]:
        st = self.dp.stats()
        st["idle"] = self.idle
        st["ports"] = {n: p.stats() for n, p in self.ports.items()}
        mb = self.mailbox
        st["mailbox"] = {"depth": mb.depth, "dropped": mb.dropped}
        return st
