"""``Manager``: deploys a plan, watches it and keeps it sized to the load. Embeddable::

    manager = Manager(workers=2)
    plan = manager.plan(Policy.load("policy.yaml"), hardware)
    await manager.deploy(plan, Traffic(pcap="trace.pcap", out="out.pcap"))
    print(await manager.stats())
    await manager.scale("ids", 3)
    await manager.wait_done()
    print(manager.summary())
    await manager.stop()

The manager runs on a node of its own process. With ``workers=N`` it starts N agent processes on
this machine (one node each, on Unix sockets): by default one switch per core, each reading its
shard of the input and running the whole policy for its flows (:mod:`e2actors.manager.shards`;
``shards=False``: the ports stay in this process and the workers only run instances). With a
hardware file naming agents by address it uses those. Each server gets a switch; instances send
load reports to the manager actor, which scales groups out and in (with hysteresis, a cooldown and
migration avoidance in the switches) and records every decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2actors.errors import E2Error
from e2actors.manager import changes
from e2actors.manager.deployment import MAIN, Deployment, Event, ServerHandle, check_agent
from e2actors.manager.diff import without_instances
from e2actors.manager.drain import DrainTracker
from e2actors.manager.hardware import Hardware, PortPlace, Server
from e2actors.manager.instances import nf_of
from e2actors.manager.plan import Plan, make_plan
from e2actors.manager.policy import Policy, resolve_config
from e2actors.manager.rebalance import BusyTracker, rebalance
from e2actors.manager.recovery import Recovery
from e2actors.manager.scaling import Autoscaler, ScalingPolicy
from e2actors.manager.shards import merge_captures, shard_hardware, shard_path
from e2actors.nf.messages import ExportState, FinalStats, GetStats, InputDone, LoadReport
from e2actors.runtime.actor import Actor
from e2actors.runtime.messages import NodeLost, Terminated, Tick
from e2actors.runtime.node import Node
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import CloseInputs, Drained, GetSwitchStats, GetTraces, SwitchLoad
from e2actors.switch.table import SwitchTable

# (check_agent and resolve_config were defined here; they stay importable from here)
__all__ = ["Manager", "Traffic", "check_agent", "resolve_config"]

log = logging.getLogger("e2actors.manager")


@dataclass
class Traffic:
    """Where traffic enters and leaves: a capture replayed (``pcap``, ``speed`` 0 = as fast as
    the deployment takes it, ``loop`` times), live interfaces (``iface_in``/``iface_out``), or
    memory ports (tests inject packets). ``out``: a pcap file for what leaves (pcap input)."""

    pcap: str | None = None
    speed: float = 0.0
    loop: int = 1
    out: str | None = None
    iface_in: str | None = None
    iface_out: str | None = None
    #: Live interfaces as a bump in the wire: what arrives on ``iface_out`` is the return direction
    #: (it takes the policy as if it entered at ``in``, and leaves through ``iface_in``).
    both_ways: bool = False

    @property
    def replay(self) -> bool:
        """A capture replayed as fast as the deployment takes it: the deployment keeps packet time."""
        return bool(self.pcap) and not self.iface_in and not self.speed

    def ports(self) -> dict[str, tuple[str, dict[str, Any]]]:
        if self.iface_in:
            out: dict[str, Any] = {"iface": self.iface_out or self.iface_in}
            if self.both_ways:
                out["reverse_of"] = "in"
            return {"in": ("afpacket", {"iface": self.iface_in}), "out": ("afpacket", out)}
        if self.pcap:
            return {"in": ("pcap-in", {"path": self.pcap, "speed": self.speed, "loop": self.loop}),
                    "out": ("pcap-out", {"path": self.out}) if self.out else ("null", {})}
        return {"in": ("memory", {}), "out": ("memory", {})}


class ManagerActor(Actor):
    """Receives load reports, drain notices and node losses; decides on a timer."""

    mailbox_size = 100_000
    overflow = "drop"

    def __init__(self, manager: Manager, tick: float = 0.25) -> None:
        self.manager = manager
        self.tick_interval = tick

    def on_start(self) -> None:
        self.every(self.tick_interval, Tick("manager"))

    async def on_message(self, msg: Any) -> Any:
        await self.manager.handle(msg)
        return None


class Manager:
    """Plans, deploys, monitors and scales one deployment (see the module docstring). The
    deployment's state and every call to its nodes are its :attr:`deployment`'s; the manager
    decides (scaling, rebalancing) and is the actor that hears from the deployment."""

    def __init__(self, *, workers: int = 0, worker_cores: int = 4, secret: bytes | None = None,
                 autoscale: bool = True, scaling: ScalingPolicy | None = None, trace_every: int = 0,
                 allow: tuple[str, ...] = (), report_interval: float = 0.25,
                 heartbeat_timeout: float = 3.0, max_inflight: int = 2, rebalance: bool = False,
                 rebalance_threshold: float = 0.3, rebalance_every: float = 2.0, tls: Any = None,
                 shards: bool = True) -> None:
        self.workers = workers
        #: With workers: one switch per worker, each with its shard of the input (no switch here).
        self.shards = shards
        self.tls = tls  # a TLSConfig: mutual TLS on every link to the agents
        self.worker_cores = worker_cores
        self.secret = secret or secrets.token_hex(32).encode()
        self.autoscale = autoscale
        self.autoscaler = Autoscaler(scaling)
        self.trace_every = trace_every
        self.report_interval = report_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_inflight = max_inflight
        self.node: Node | None = None
        self.ref: ActorRef | None = None
        self.traffic = Traffic()
        self.deployment = Deployment(allow=("e2actors.",) + tuple(allow), secret=self.secret,
                                     heartbeat_timeout=heartbeat_timeout, report_interval=report_interval,
                                     workers=bool(workers))
        self.drains = DrainTracker()
        self._last_stats: dict[str, Any] = {}
        self.started = False
        self.deployed = False
        self._input_told = False
        # Keeping the deployment healthy (moves, updates, failures: changes.py, recovery.py)
        self.rebalance_enabled = rebalance
        self.rebalance_threshold = rebalance_threshold
        self.rebalance_every = rebalance_every
        self._last_rebalance = 0.0
        self.busy = BusyTracker()  # instance -> busy fraction, from load reports (rebalancing)
        self.recovery = Recovery(self.deployment, self.autoscaler)

    # --- the deployment's state, read through the manager ------------------------------------------
    @property
    def allow(self) -> tuple[str, ...]:
        """Class prefixes actors may be loaded from (here and on the workers)."""
        return self.deployment.allow

    @property
    def plan_(self) -> Plan | None:
        """The plan in force (None before :meth:`deploy`)."""
        return self.deployment.plan

    @property
    def servers(self) -> Mapping[str, ServerHandle]:
        return self.deployment.servers

    @property
    def instances(self) -> Mapping[str, ActorRef]:
        return self.deployment.instances

    @property
    def states(self) -> Mapping[str, str]:
        return self.deployment.states

    @property
    def version(self) -> int:
        return self.deployment.version

    @property
    def events(self) -> list[Event]:
        return self.deployment.events

    @property
    def t0(self) -> float:
        return self.deployment.t0

    @property
    def last_move_pause(self) -> float:
        return self.deployment.last_move_pause

    @property
    def clock(self) -> str:
        """``packet`` while replaying a capture as fast as the deployment takes it (timeouts in
        the capture's time, so the outcome does not depend on the machine's speed), else ``wall``."""
        return "packet" if self.traffic.replay else "wall"

    # --- planning -------------------------------------------------------------------------------
    def hardware_for(self, hardware: Hardware | None) -> Hardware:
        """The hardware to plan on: the one given, N local workers, or this process alone."""
        if hardware is not None:
            return hardware
        if self.workers and self.shards:
            return shard_hardware(self.workers, self.worker_cores)
        if self.workers:
            servers = [Server(MAIN, 0)] + [Server(f"w{i}", self.worker_cores) for i in range(1, self.workers + 1)]
        else:
            servers = [Server(MAIN, 1 << 20)]
        return Hardware(servers, {"in": PortPlace("in", MAIN), "out": PortPlace("out", MAIN)})

    def plan(self, policy: Policy, hardware: Hardware | None = None, load: float | None = None,
             solver: str = "heuristic") -> Plan:
        """Size and place ``policy`` (pure: nothing starts)."""
        return make_plan(policy, self.hardware_for(hardware), load=load, solver=solver)

    # --- start / deploy -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        self.node = Node("manager", secret=self.secret, allow_spawn=self.allow, tls=self.tls, remote_spawns=False,
                         heartbeat_interval=self.heartbeat_timeout / 6, heartbeat_timeout=self.heartbeat_timeout)
        await self.node.start()
        self.ref = self.node.spawn(ManagerActor, "manager", manager=self)
        self.node.subscribe(self.ref)
        self.deployment.attach(self.node, self.ref)
        self.started = True

    async def deploy(self, plan: Plan, traffic: Traffic | None = None) -> None:
        """Start what ``plan`` needs (workers, switches, instances) and install the tables."""
        await self.start()
        dep = self.deployment
        self.traffic = traffic or Traffic()
        dep.clock = self.clock
        # No traffic given: the hardware file's ports (kind and params, e.g. AF_PACKET) stay.
        ports = self.traffic.ports() if traffic is not None else {}
        hw = plan.hardware
        hw.ports = {n: dataclasses.replace(p, kind=ports[n][0], params=ports[n][1]) if n in ports else p
                    for n, p in hw.ports.items()}
        dep.set_plan(plan)
        # The modules the policy names are the user's own choice for this process and the workers
        # it starts (agents keep their own allow-lists: a remote refusal says which option admits it).
        dep.allow_modules(spec.cls.partition(":")[0] for spec in plan.policy.nfs.values())
        await dep.start_servers(hw)
        live = any(p.kind == "afpacket" for p in hw.ports.values())
        await dep.start_switches(trace_every=self.trace_every, max_inflight=self.max_inflight, live=live)
        for inst, server in plan.assignment.items():
            await self._spawn_instance(plan, inst, server)
        await dep.until_ready(plan.assignment)
        # Shards sharing live interfaces join each PACKET_FANOUT group in the same order (the
        # kernel hands a flow to the member at the same index in every group: both directions
        # of a connection reach one switch), so their first tables go one server at a time.
        await dep.push_tables(sequential=bool(hw.shards) and live)
        self.deployed = True
        dep.t0 = time.monotonic()
        dep.record("*", "deploy", f"{len(dep.instances)} instances on {len(dep.servers)} servers")

    async def _spawn_instance(self, plan: Plan, inst: str, server: str) -> None:
        """Start member ``inst`` (not ``in``/``out``, not an inline NF's) under its own name."""
        nf = nf_of(inst)
        if nf in ("in", "out"):
            return
        spec = plan.policy.nfs[nf]
        if spec.inline:
            return
        ref = await self.deployment.spawn_instance(inst, server, spec, plan.policy.base_dir)
        self.deployment.add_instance(inst, ref)

    def config_for(self, server: str, config: dict[str, Any], base_dir: str | None = None) -> dict[str, Any]:
        """An NF's config as sent to ``server`` (see :meth:`Deployment.config_for`)."""
        return self.deployment.config_for(server, config, base_dir)

    def tables(self) -> dict[str, SwitchTable]:
        """A new version of every switch's table from the plan in force."""
        return self.deployment.tables()

    # --- scaling --------------------------------------------------------------------------------
    async def scale(self, nf: str, n: int, reason: str = "by request") -> None:
        """Resize ``nf`` to ``n`` instances: new ones are placed incrementally and take new flows;
        removed ones drain (no new flows; stopped once their flows ended)."""
        dep = self.deployment
        async with dep.lock:
            plan = dep.plan
            assert plan is not None
            cur = [i for i in plan.instances_of(nf) if dep.states.get(i, "running") != "draining"]
            if n == len(cur):
                return
            t_decided = time.monotonic()
            if n > len(cur):
                new_plan = plan.scale(nf, len(plan.instances_of(nf)) + (n - len(cur)))
                added = [i for i in new_plan.instances_of(nf) if i not in plan.instances_of(nf)]
                dep.set_plan(new_plan)
                for inst in added:
                    await self._spawn_instance(new_plan, inst, new_plan.assignment[inst])
                await dep.until_ready(added)
                await dep.push_tables()
                dep.record(nf, "scale-out", f"{len(cur)} -> {n} ({reason}); new: "
                           + ", ".join(f"{i}@{new_plan.assignment[i]}" for i in added)
                           + f"; in service after {(time.monotonic() - t_decided) * 1e3:.0f} ms", at=t_decided)
            else:
                victims = sorted(cur, key=lambda i: int(i.partition("#")[2]))[n - len(cur):]
                for v in victims:
                    dep.set_state(v, "draining")
                    self.drains.start(v, dep.servers, time.monotonic())
                await dep.push_tables()
                dep.record(nf, "scale-in", f"{len(cur)} -> {n} ({reason}); draining: {', '.join(victims)}",
                           at=t_decided)
            self.autoscaler.changed(nf, time.monotonic())

    async def _retire(self, inst: str) -> None:
        """A drained instance leaves the plan and the tables, then stops."""
        dep = self.deployment
        async with dep.lock:
            if not self.drains.finish(inst):
                return
            plan = dep.plan
            assert plan is not None
            nf = nf_of(inst)
            # Exactly this instance leaves (a scale-in by several drains them one by one, in
            # whatever order their flows end).
            new_plan = without_instances(plan, {inst})
            dep.set_plan(new_plan)
            ref = dep.remove_instance(inst)
            await dep.push_tables()
            if ref is not None:
                await dep.retire(inst, ref, plan.assignment[inst], "drained", key=inst)
            self.autoscaler.forget(nf, inst)
            dep.checkpoints.forget(inst)
            dep.record(nf, "retired", f"{inst} drained and stopped")

    # --- what the manager actor hears -------------------------------------------------------------
    async def handle(self, msg: Any) -> None:
        """One message to the manager actor: load reports, drain notices, node losses, its timer."""
        if isinstance(msg, LoadReport):
            self._on_report(msg)
        elif isinstance(msg, Drained):
            self._on_drained(msg)
        elif isinstance(msg, SwitchLoad):
            self._on_switch_load(msg)
        elif isinstance(msg, FinalStats):
            if isinstance(msg.stats, dict):
                self.deployment.keep_final(msg.instance, msg.stats)
        elif isinstance(msg, NodeLost):
            self.recovery.on_node_lost(msg)
        elif isinstance(msg, Terminated):
            self.recovery.on_terminated(msg)
        elif isinstance(msg, Tick):
            await self._tick()

    def _on_report(self, r: LoadReport) -> None:
        self.autoscaler.report(r.nf, r.instance, r.busy, r.drops, time.monotonic())
        self.busy.report(r.instance, r.busy, time.monotonic())

    def _on_drained(self, msg: Drained) -> None:
        if self.drains.drained(msg.instance, msg.server):
            self.deployment.spawn_task(self._retire(msg.instance), f"retire {msg.instance}")

    def _on_switch_load(self, msg: SwitchLoad) -> None:
        for inst, n in msg.congestion:
            self.autoscaler.congested(nf_of(inst), inst, n)

    async def _tick(self) -> None:
        dep = self.deployment
        now = time.monotonic()
        for inst in self.drains.overdue(now):  # a switch never answered: retire anyway
            dep.spawn_task(self._retire(inst), f"retire {inst}")
        if self.rebalance_enabled and self.deployed and not dep.lock.locked() \
                and now - self._last_rebalance >= self.rebalance_every:
            self._last_rebalance = now
            dep.spawn_task(self._rebalance_quietly(), "rebalance")
        plan = dep.plan
        if self.deployed and plan is not None:
            intervals = {nf: spec.checkpoint for nf, spec in plan.policy.nfs.items() if spec.checkpoint}
            for nf in dep.checkpoints.due(intervals, now) if intervals else ():
                dep.spawn_task(self._checkpoint(nf, intervals[nf]), f"checkpoint {nf}")
        if not (self.autoscale and self.deployed and plan is not None) or dep.lock.locked():
            return
        for nf, spec in plan.policy.nfs.items():
            if spec.inline:
                continue
            cur = [i for i in plan.instances_of(nf) if dep.states.get(i) != "draining"]
            if any(dep.states.get(i) == "draining" for i in plan.instances_of(nf)):
                continue  # one change at a time per group
            lo = spec.min_instances
            # (shards lost during the run have no cores left: they need no instance)
            shards = [s for s in plan.hardware.shards if plan.hardware.servers[s].cores > 0]
            if shards:  # an instance in every shard, or its flows would cross to another one
                lo = max(lo, min(len(shards), spec.max_instances or len(shards)))
            d = self.autoscaler.decide(nf, len(cur), lo, spec.max_instances, now)
            if d is None:
                continue
            try:
                await self.scale(nf, d.target, reason=d.reason)
            except E2Error as exc:
                dep.record(nf, "scale-failed", str(exc))
                self.autoscaler.changed(nf, now)

    async def _checkpoint(self, nf: str, every: float) -> None:
        """One round of checkpoints of ``nf``: each running instance's exported state (see
        :mod:`e2actors.manager.checkpoint`); one that does not answer keeps its previous one."""
        dep = self.deployment
        plan = dep.plan
        states: dict[str, Any] = {}
        t = time.monotonic()
        try:
            refs = {i: dep.instances[i] for i in (plan.instances_of(nf) if plan else ())
                    if i in dep.instances and dep.states.get(i, "running") == "running"}
            states = await dep.ask_each(refs, ExportState(), timeout=max(1.0, min(every, 10.0)))
        finally:
            dep.checkpoints.done(nf, t, states)

    async def _rebalance_quietly(self) -> None:
        try:
            await self.rebalance()
        except Exception as exc:
            self.deployment.record("*", "rebalance-failed", repr(exc))
        self._last_rebalance = time.monotonic()

    # --- changing a running deployment (see changes.py) ------------------------------------------
    async def move(self, instance: str, server: str) -> float:
        """Move ``instance`` to ``server`` with its state; returns how long its packets were held."""
        return await changes.move(self.deployment, instance, server)

    async def update(self, policy: Policy, dry_run: bool = False) -> Any:
        """Apply a new policy live as one transaction; returns the :class:`PolicyDiff`."""
        if not dry_run:
            # As at deploy: the modules the policy names are the user's choice for this process
            # (workers keep the list they started with; agents their own).
            self.deployment.allow_modules(spec.cls.partition(":")[0] for spec in policy.nfs.values())
        d = await changes.update(self.deployment, policy, dry_run=dry_run, autoscaler=self.autoscaler)
        if dry_run or not d.applied:
            return d
        for n, spec in policy.nfs.items():  # new bounds on kept NFs
            cur = self.instance_counts().get(n, 0)
            lo, hi = spec.min_instances, spec.max_instances or cur
            if not spec.inline and (cur < lo or cur > hi):
                await self.scale(n, min(max(cur, lo), hi), reason="policy update bounds")
        return d

    async def upgrade(self, nf: str, cls: str, config: dict[str, Any] | None = None) -> Any:
        """Replace ``nf``'s pipelet class live; the new instances take over the old ones' state."""
        assert self.plan_ is not None
        return await self.update(changes.upgraded_policy(self.plan_.policy, nf, cls, config))

    async def rebalance(self) -> tuple[str, str, str] | None:
        """One move evening out the servers' load (instance, from, to), or None."""
        busy = self.busy.recent(time.monotonic(), 3 * self.report_interval + 1.0)
        choice = await rebalance(self.deployment, busy, self.rebalance_threshold)
        if choice is not None:
            self.busy.clear()  # measure afresh after the change
        return choice

    # --- observing ------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """Live counters of every switch and instance (one round of asks)."""
        dep = self.deployment
        t_asked = time.monotonic()
        sw = await dep.ask_each(dep.switches(), GetSwitchStats())
        ins = await dep.ask_each(dict(dep.instances), GetStats())
        dep.note_stats(sw, ins, t_asked, time.monotonic())  # (what is known of a server once it is lost)
        out = {"switches": _errors_as_dicts(sw), "instances": _errors_as_dicts(ins),
               "t": time.monotonic() - dep.t0}
        self._last_stats = out
        return out

    async def traces(self) -> list[dict[str, Any]]:
        """Paths of the sampled packets (``trace_every``), from every switch."""
        out: list[dict[str, Any]] = []
        for r in (await self.deployment.ask_each(self.deployment.switches(), GetTraces())).values():
            if not isinstance(r, BaseException):
                out.extend(r)
        return out

    def _tell_input_done(self) -> None:
        """Every input is exhausted: tell the switches and instances, whose replay clocks then go
        on with the wall clock (what waits on a timeout leaves now, not after their idle grace)."""
        self._input_told = True
        self.deployment.tell_all(InputDone())

    async def close_inputs(self, drain: float = 5.0) -> bool:
        """Stop reading input everywhere (the end of a live run, or a stop asked for) and wait up
        to ``drain`` seconds for what is in the deployment to leave; True when it all did."""
        for server, r in (await self.deployment.ask_each(self.deployment.switches(), CloseInputs())).items():
            if isinstance(r, BaseException):
                log.warning("closing the inputs of %s: %r", server, r)
        return await self.wait_done(timeout=drain)

    def instance_counts(self) -> dict[str, int]:
        assert self.plan_ is not None
        return {nf: sum(1 for i in self.plan_.instances_of(nf) if self.states.get(i) not in ("draining", "failed"))
                for nf in self.plan_.policy.nfs}

    async def wait_done(self, timeout: float | None = None, poll: float = 0.1, on_poll=None) -> bool:
        """Wait until the input is exhausted and nothing is in flight anywhere (3 quiet polls)."""
        t_end = None if timeout is None else time.monotonic() + timeout
        quiet = 0
        last = None
        while True:
            st = await self.stats()
            if on_poll is not None:
                on_poll(st)
            sws = st["switches"].values()
            done_input = all(isinstance(s, dict) and s.get("ports", {}).get("in", {}).get("done", True) for s in sws)
            idle = all(isinstance(s, dict) and s.get("idle") and s.get("mailbox", {}).get("depth", 1) == 0 for s in sws)
            queues = all(isinstance(i, dict) and i.get("queue", 0) == 0 and i.get("held", 0) == 0
                         for i in st["instances"].values())
            sig = _progress(st)
            if done_input and not self._input_told:
                self._tell_input_done()
            if done_input and idle and queues and sig == last:
                quiet += 1
                if quiet >= 3:
                    return True
            else:
                quiet = 0
            last = sig
            if t_end is not None and time.monotonic() > t_end:
                return False
            await asyncio.sleep(poll)

    def summary(self, stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Per NF instance packets in/out/dropped, per edge packets, drops by reason, verdicts,
        scaling events: the run's account."""
        st = stats or self._last_stats
        plan = self.plan_
        edges: Counter = Counter()
        drops: Counter = Counter()
        ports: dict[str, Any] = {}
        remote = 0
        lost = 0
        port_errors: list[dict[str, str]] = []
        nf_errors: list[dict[str, Any]] = []
        hops: dict[str, list[int]] = {}
        t_first, t_last = [], []
        # Servers lost during the run: a lost shard's switch as last read, and its input nobody read.
        gone, unread, lost_by = self.recovery.accounting(st.get("switches", {}))
        for server, s in {**st.get("switches", {}), **gone}.items():
            if not isinstance(s, dict) or "routes" not in s:
                continue
            edges.update(s["routes"])
            drops.update({f"switch: {k}": v for k, v in s["drops"].items()})
            for pname, p in s["ports"].items():
                cur = ports.get(pname)
                if cur is None:  # (a sharded port exists on every shard: its counts add up)
                    ports[pname] = {k: p[k] for k in ("kind", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
                else:
                    for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                        cur[k] += p[k]
                if p["drops"]:
                    drops.update({f"port {pname}: {k}": v for k, v in p["drops"].items()})
                if p.get("error"):
                    port_errors.append({"where": f"port {pname} on {server}", "error": p["error"]})
            remote += sum(s.get("remote_tx", {}).values())
            cr = s.get("credits") or {}
            # Packets admitted and never finished (sent out, dropped, counted) when the run ended.
            lost += sum(max(0, n) for n in (cr.get("in_flight") or {}).values()) + cr.get("written_off", 0)
            if s.get("t_first"):
                t_first.append(s["t_first"])
            if s.get("t_last"):
                t_last.append(s["t_last"])
            for hop, h in (s.get("hops") or {}).items():
                acc = hops.setdefault(hop, [0, 0])
                acc[0] += h["batches"]
                acc[1] += h["packets"]
            for nf, g in s.get("groups", {}).items():
                if g.get("runner"):
                    r = g["runner"]
                    ports.setdefault("_inline", {})[f"{nf}@{server}"] = r
        instances: dict[str, Any] = {}
        verdicts: Counter = Counter()
        alerts: Counter = Counter()
        live = {k: v for k, v in st.get("instances", {}).items() if isinstance(v, dict) and "packets_in" in v}
        for inst, i in {**self.deployment.retired, **live}.items():
            if not isinstance(i, dict) or "packets_in" not in i:
                continue
            server = plan.assignment.get(inst, i.get("server", "?")) if plan else "?"
            instances[inst] = {"nf": nf_of(inst), "server": server, "in": i["packets_in"], "out": i["packets_out"],
                               "dropped": i["dropped"], "refused_batches": i.get("mailbox_dropped", 0),
                               "lost": i["lost"],
                               "errors": i["errors"], "flows": i["flows"], "per_port": i["per_port"],
                               "counters": dict(i.get("counters", {})),
                               "state": "lost" if i.get("lost_with") else
                               self.states.get(inst, "retired" if i.get("retired") else "running"),
                               "restarts": i.get("restarts", 0),
                               "busy_seconds": round(i["busy_seconds"], 4)}
            for reason, n in ({} if i.get("lost_with") else i.get("drops", {})).items():
                # (a lost instance's drops: in its switch's account, see Recovery.accounting)
                drops[f"{nf_of(inst)}: {reason}"] += n
            nf_errors.extend(i.get("error_list") or ())
            # (batches an instance's full mailbox refused are counted, in packets, by the switch
            # that sent them: "switch: queue full")
            for k, v in i.get("counters", {}).items():
                if k.startswith("alert:"):
                    alerts[k[6:]] += v
            for port, n in i.get("per_port", {}).items():
                if nf_of(inst) in _verdict_nfs(plan):
                    verdicts[port] += n
        packets_in = ports.get("in", {}).get("rx_packets", 0) + unread
        packets_out = ports.get("out", {}).get("tx_packets", 0)
        if self.recovery.lost:
            # Where the packets lost in an outage were: what the surviving switches admitted and
            # never saw finish, a lost shard's in-flight and unread input (Recovery.accounting),
            # and what lost servers finished after their last counters (dropped or lost there:
            # the rest of the account).
            if lost:
                lost_by["admitted by a surviving switch, never finished (at lost servers' instances, "
                        "or in flight when the run ended)"] = lost
            rest = packets_in - packets_out - sum(drops.values()) - sum(lost_by.values())
            if rest > 0:
                lost_by["handled at lost servers after their last counters (dropped or lost there)"] = rest
            elif rest < 0:
                port_errors.append({"where": "account", "error": f"{-rest:,} packets counted twice around the "
                                    "loss of " + ", ".join(sorted(self.recovery.lost))})
            lost = sum(lost_by.values())
        return {
            "policy": plan.policy.name if plan else None,
            "seconds": round(st.get("t", 0.0), 3),
            # From the first packet read to the last one sent out or dropped (without start-up
            # and the quiet polls that tell the end): what throughput figures divide by.
            "active_seconds": round(max(t_last) - min(t_first), 4) if t_first and t_last else 0.0,
            "servers": sorted(self.servers),
            "packets_in": packets_in,
            "packets_out": packets_out,
            "ports": {k: v for k, v in ports.items() if not k.startswith("_")},
            "instances": instances,
            "instances_per_nf": self.instance_counts() if plan else {},
            "edges": dict(edges),
            "inter_server_packets": remote,
            "lost": lost,
            # Where ``lost`` packets were (an outage: see Recovery.accounting); empty otherwise.
            "lost_by": lost_by,
            "lost_servers": sorted(self.recovery.lost),
            # Per NF that takes checkpoints: rounds, failures, restores, each member's latest age.
            "checkpoints": self.deployment.checkpoints.summary(time.monotonic()),
            "congestion_drops": sum(n for r, n in drops.items() if _is_congestion(r)),
            "batches": {h: round(p / b, 2) if b else 0.0 for h, (b, p) in sorted(hops.items())},
            "batch_mean": round(sum(p for _b, p in hops.values()) / max(1, sum(b for b, _p in hops.values())), 2),
            "drops": dict(drops),
            "verdicts": dict(verdicts),
            "alerts": dict(alerts),
            "scaling_events": [e.as_dict() for e in self.events],
            # What went wrong: deployment events, failed ports and outputs, and each kind of exception
            # an NF raised (with where in the pipelet's own code, and how often).
            "errors": [e.as_dict() for e in self.events if e.kind in _ERROR_KINDS] + port_errors + nf_errors,
            # Why the run failed (empty: it did not): the exit status of `e2actors run` follows it.
            "failures": [f"{e['where']}: {e['error']}" for e in port_errors]
            + [f"{e.nf}: {e.detail}" for e in self.events if e.kind == "failed"]
            + [f"server {n} lost ({why})" for n, why in self.recovery.losses_summary().items()]
            # (an NF that could not finish its outputs: what it wrote may be incomplete)
            + [f"{e['instance']}: {e['type']} at the end: {e['message']}" for e in nf_errors
               if isinstance(e, dict) and e.get("during") == "teardown"]
            + ([f"{lost:,} packets lost: " + "; ".join(f"{n:,} {w}" for w, n in lost_by.items()) if lost_by
                else f"{lost:,} packets admitted and never accounted for"] if lost else []),
        }

    # --- stopping -------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop switches, instances and workers."""
        if self.node is not None:
            await self.deployment.stop_all()
            await self.node.stop()
        self.deployment.reap()
        self._merge_outputs()
        self.started = False

    def _merge_outputs(self) -> None:
        """Sharded runs write each output pcap in parts, one per shard: merge them into the file
        asked for (by timestamp; each flow's packets keep their order)."""
        plan = self.plan_
        if plan is None or not plan.hardware.shards or any(s.address for s in plan.hardware.servers.values()):
            return  # (an agent's machine merges its own: Deployment.merge_on_agents)
        for p in plan.hardware.ports.values():
            path = p.params.get("path")
            if p.kind == "pcap-out" and path:
                parts = [shard_path(str(path), s) for s in plan.hardware.shards]
                if any(os.path.exists(x) for x in parts):
                    merge_captures(parts, str(path))



def _errors_as_dicts(replies: dict[str, Any]) -> dict[str, Any]:
    return {k: {"error": repr(v)} if isinstance(v, BaseException) else v for k, v in replies.items()}


def _is_congestion(reason: str) -> bool:
    """Drops for lack of room in the middle of a chain (never an NF's or the policy's decision)."""
    r = reason.partition(": ")[2] if reason.startswith("switch: ") else ""
    return r in ("queue full", "hold overflow") or (r.startswith("link to ") and r.endswith(" congested")) \
        or (r.startswith("instance ") and r.endswith(" stalled"))


_ERROR_KINDS = ("failed", "node-lost", "update-failed", "scale-failed", "rebalance-failed")


def _progress(st: dict[str, Any]) -> tuple:
    tot = []
    for s in st.get("switches", {}).values():
        if isinstance(s, dict) and "ports" in s:
            tot.append(sum(p["tx_packets"] + p["rx_packets"] for p in s["ports"].values()))
            tot.append(sum(s["drops"].values()))
            tot.append(s.get("remote_rx", 0))
    for i in st.get("instances", {}).values():
        if isinstance(i, dict):
            tot.append(i.get("packets_in", 0))
    return tuple(tot)


def _verdict_nfs(plan: Plan | None) -> set[str]:
    """NFs whose output ports are verdicts (an IDS-like NF: ``safe``/``unsafe`` ports)."""
    if plan is None:
        return set()
    return {n for n, s in plan.policy.nfs.items() if "unsafe" in s.ports}
