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
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from e2actors.errors import E2Error, RemoteError, SpawnRefused
from e2actors.manager.hardware import Hardware, PortPlace, Server
from e2actors.manager.instances import nf_of
from e2actors.manager.plan import Plan, make_plan
from e2actors.manager.policy import Policy
from e2actors.manager.scaling import Autoscaler, ScalingPolicy
from e2actors.nf.messages import FinalStats, GetStats, LoadReport
from e2actors.runtime.actor import Actor
from e2actors.runtime.messages import NodeLost, Spawn, StopActor, Terminated, Tick
from e2actors.runtime.node import Node
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import Drained, GetSwitchStats, SetTable, SwitchLoad
from e2actors.switch.table import SwitchTable

__all__ = ["Manager", "Traffic"]

log = logging.getLogger("e2actors.manager")

MAIN = "main"


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


@dataclass
class Event:
    t: float
    nf: str
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "nf": self.nf, "kind": self.kind, "detail": self.detail}


@dataclass
class _Server:
    name: str
    node_address: str
    switch: ActorRef | None = None
    proc: subprocess.Popen | None = None
    remote: bool = False  # an agent named by address in the hardware file (not this run's own)


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
        m = self.manager
        if isinstance(msg, LoadReport):
            m._on_report(msg)
        elif isinstance(msg, Drained):
            m._on_drained(msg)
        elif isinstance(msg, SwitchLoad):
            m._on_switch_load(msg)
        elif isinstance(msg, FinalStats):
            m._on_final_stats(msg)
        elif isinstance(msg, NodeLost):
            m._on_node_lost(msg)
        elif isinstance(msg, Terminated):
            m.recovery.on_terminated(msg)
        elif isinstance(msg, Tick):
            await m._tick()
        return None


class Manager:
    """Plans, deploys, monitors and scales one deployment (see the module docstring)."""

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
        self.allow = ("e2actors.",) + tuple(allow)
        self.report_interval = report_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_inflight = max_inflight
        self.node: Node | None = None
        self.ref: ActorRef | None = None
        self.plan_: Plan | None = None
        self.servers: dict[str, _Server] = {}
        self.instances: dict[str, ActorRef] = {}
        self.states: dict[str, str] = {}
        self.version = 0
        self.events: list[Event] = []
        self.t0 = time.monotonic()
        self.traffic = Traffic()
        self._tmp = tempfile.mkdtemp(prefix="e2actors-")
        self._lock = asyncio.Lock()
        self._draining: dict[str, set[str]] = {}  # instance -> servers that have not reported drained
        self._drain_started: dict[str, float] = {}
        self._last_stats: dict[str, Any] = {}
        self._final_instances: dict[str, dict[str, Any]] = {}
        self.started = False
        self.deployed = False
        self._input_told = False
        self._shard_hosts: dict[str, ActorRef] = {}  # agent's server -> its ShardHost
        # Keeping the deployment healthy (moves, updates, failures: changes.py, recovery.py)
        from e2actors.manager.recovery import Recovery

        self.rebalance_enabled = rebalance
        self.rebalance_threshold = rebalance_threshold
        self.rebalance_every = rebalance_every
        self._last_rebalance = 0.0
        self._busy: dict[str, tuple[float, float]] = {}  # instance -> (busy fraction, when reported)
        self._gen = 0  # numbers the actors that replace instances (moves, upgrades, recovery)
        self._lost_procs: list[subprocess.Popen] = []
        self.last_move_pause = 0.0
        self.recovery = Recovery(self)

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
            from e2actors.manager.shards import shard_hardware

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
        self.started = True

    async def _start_servers(self, hardware: Hardware) -> None:
        assert self.node is not None
        for name, srv in hardware.servers.items():
            if name in self.servers:
                continue
            if srv.shard_of:
                continue  # (started by its machine's agent, below)
            if srv.address:
                addr = srv.address if "://" in srv.address else f"tcp://{srv.address}"
                await check_agent(self.node, name, addr, srv.cores)
                self.servers[name] = _Server(name, addr, remote=True)
            elif name == MAIN or (not self.workers and len(hardware.servers) == 1):
                self.servers[name] = _Server(name, self.node.address)
            else:
                self.servers[name] = await self._start_worker(name, srv.cores)
        await self._start_shards(hardware)

    async def _start_shards(self, hardware: Hardware) -> None:
        """Servers that are more switch processes of an agent's machine (``switches: N``): its
        agent starts them (a :class:`~e2actors.runtime.shardhost.ShardHost`), then each is checked
        like any agent."""
        from e2actors.runtime.shardhost import StartShards

        assert self.node is not None
        by_parent: dict[str, list[Server]] = {}
        for name, srv in hardware.servers.items():
            if srv.shard_of and name not in self.servers:
                by_parent.setdefault(srv.shard_of, []).append(srv)
        for parent, shards in by_parent.items():
            paddr = self.servers[parent].node_address
            host = await self.node.ask(self.node.system_ref(paddr),
                                       Spawn("e2actors.runtime.shardhost:ShardHost", f"shardhost-{parent}", {}),
                                       timeout=10)
            self._shard_hosts[parent] = host
            addrs = await self.node.ask(host, StartShards(tuple(s.name for s in shards), shards[0].cores), timeout=60)
            for srv, addr in zip(shards, addrs):
                if addr.startswith("tcp://") and paddr.startswith("tcp://"):
                    # (a shard listening on all interfaces is reached where its agent is)
                    host_part = paddr[len("tcp://"):].rsplit(":", 1)[0]
                    addr = f"tcp://{host_part}:{addr.rsplit(':', 1)[1]}"
                await check_agent(self.node, srv.name, addr, srv.cores)
                self.servers[srv.name] = _Server(srv.name, addr, remote=True)

    async def _start_worker(self, name: str, cores: int) -> _Server:
        secret_file = os.path.join(self._tmp, "secret")
        if not os.path.exists(secret_file):
            with open(secret_file, "wb") as f:
                f.write(self.secret)
            os.chmod(secret_file, 0o600)
        sock = f"unix://{self._tmp}/{name}.sock"
        cmd = [sys.executable, "-m", "e2actors", "agent", "--listen", sock, "--secret-file", secret_file,
               "--name", name, "--cores", str(cores), "--exit-with-parent",
               "--heartbeat-timeout", str(self.heartbeat_timeout),
               # Workers are this run's own processes: confined no more than this one (docs/running.md).
               "--unconfined", "--data-dir", os.getcwd()]
        for a in self.allow:
            cmd += ["--allow", a]
        env = dict(os.environ)
        # Workers import the policy's pipelet classes as this process does: same search path.
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *(p for p in sys.path if p), env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)  # type: ignore[union-attr]
        if not line.startswith("READY "):
            proc.kill()
            raise E2Error(f"worker {name} did not start: {line!r}")
        addr = line.split()[1]
        assert self.node is not None
        await self.node.connect(addr)
        return _Server(name, addr, proc=proc)

    async def deploy(self, plan: Plan, traffic: Traffic | None = None) -> None:
        """Start what ``plan`` needs (workers, switches, instances) and install the tables."""
        await self.start()
        assert self.node is not None and self.ref is not None
        self.traffic = traffic or Traffic()
        # No traffic given: the hardware file's ports (kind and params, e.g. AF_PACKET) stay.
        ports = self.traffic.ports() if traffic is not None else {}
        hw = plan.hardware
        hw.ports = {n: dataclasses.replace(p, kind=ports[n][0], params=ports[n][1]) if n in ports else p
                    for n, p in hw.ports.items()}
        self.plan_ = plan
        # The modules the policy names are the user's own choice for this process and the workers
        # it starts (agents keep their own allow-lists: a remote refusal says which option admits it).
        mods = {spec.cls.partition(":")[0] for spec in plan.policy.nfs.values()}
        self.allow = tuple(dict.fromkeys(self.allow + tuple(sorted(m for m in mods if m))))
        self.node.allow_spawn = self.allow
        await self._start_servers(hw)
        for name, srv in self.servers.items():
            srv.switch = await self._spawn_on(name, "e2actors.switch.switch:Switch", f"switch-{name}",
                                              {"server": name, "manager": self.ref, "trace_every": self.trace_every,
                                               "max_inflight": self.max_inflight,
                                               "live": any(p.kind == "afpacket" for p in hw.ports.values())})
        for inst, server in plan.assignment.items():
            await self._spawn_instance(inst, server)
        await self._until_ready(list(plan.assignment))
        # Shards sharing live interfaces join each PACKET_FANOUT group in the same order (the
        # kernel hands a flow to the member at the same index in every group: both directions
        # of a connection reach one switch), so their first tables go one server at a time.
        await self._push_tables(sequential=bool(hw.shards) and any(p.kind == "afpacket" for p in hw.ports.values()))
        self.deployed = True
        self.t0 = time.monotonic()
        self._event("*", "deploy", f"{len(self.instances)} instances on {len(self.servers)} servers")

    async def _spawn_on(self, server: str, cls: str, name: str, kwargs: dict[str, Any]) -> ActorRef:
        assert self.node is not None
        srv = self.servers[server]
        if srv.node_address == self.node.address:
            from e2actors.runtime.node import load_class

            return self.node.spawn(load_class(cls, self.allow), name, **kwargs)
        try:
            return await self.node.ask(self.node.system_ref(srv.node_address), Spawn(cls, name, kwargs), timeout=10)
        except RemoteError as exc:
            if "SpawnRefused" in str(exc):  # the agent said no: say which server, and why
                what = kwargs.get("pipelet", cls)
                why = str(exc).partition(": ")[2]
                if "allow-list" in why:
                    raise SpawnRefused(f"the agent of server {server} at {srv.node_address} refused to load {what}: "
                                       f"{why} (start it with --allow MODULE to permit)") from None
                raise SpawnRefused(f"the agent of server {server} at {srv.node_address} refused {why}") from None
            raise

    async def _spawn_instance(self, inst: str, server: str) -> None:
        assert self.plan_ is not None
        nf = nf_of(inst)
        if nf in ("in", "out"):
            return
        spec = self.plan_.policy.nfs[nf]
        if spec.inline:
            return
        sw = self.servers[server].switch
        ref = await self._spawn_on(server, "e2actors.nf.instance:NFInstance", inst,
                                   {"pipelet": spec.cls, "config": self.config_for(server, spec.config), "nf": nf,
                                    "output": sw, "monitor": self.ref, "report_interval": self.report_interval,
                                    "clock": "replay" if self.clock == "packet" else "wall"})
        self.instances[inst] = ref
        self.states[inst] = "running"
        self.node.watch(ref, self.ref)  # type: ignore[union-attr,arg-type]  # Terminated -> recovery

    async def _until_ready(self, insts: list[str], timeout: float = 120.0) -> None:
        """Wait until the new instances ran their setup (a vport NF's program can take seconds to
        start), so that no switch sends them flows before. One that fails to start is left to
        recovery (its Terminated message)."""
        async def ready(ref: ActorRef) -> None:
            try:
                await self.node.ask(ref, GetStats(), timeout=timeout)  # type: ignore[union-attr]
            except Exception as exc:
                log.debug("instance %s did not become ready: %r", ref, exc)

        await asyncio.gather(*(ready(self.instances[i]) for i in insts if i in self.instances))

    def config_for(self, server: str, config: dict[str, Any], base_dir: str | None = None) -> dict[str, Any]:
        """An NF's config as sent to ``server``. In this process and to its workers, relative paths
        that name files next to the policy become absolute (rules files). An agent named in the
        hardware file gets them as written: it takes them from its own data directory."""
        if self.servers.get(server) is not None and self.servers[server].remote:
            return dict(config)
        if base_dir is None:
            base_dir = self.plan_.policy.base_dir if self.plan_ is not None else "."
        return resolve_config(config, base_dir)

    def tables(self) -> dict[str, SwitchTable]:
        assert self.plan_ is not None
        self.version += 1
        switches = {n: s.switch for n, s in self.servers.items() if s.switch is not None}
        return self.plan_.tables(self.version, refs=self.instances, switches=switches, states=self.states,
                                 clock=self.clock)

    async def _push_tables(self, sequential: bool = False) -> None:
        assert self.node is not None
        tables = self.tables()

        async def push(server: str, t: SwitchTable) -> None:
            t0 = time.monotonic()
            await self.node.ask(self.servers[server].switch, SetTable(t), timeout=10)  # type: ignore[arg-type]
            log.debug("table v%d on %s in %.1f ms", t.version, server, (time.monotonic() - t0) * 1e3)

        todo = [(s, t) for s, t in tables.items() if self.servers.get(s) and self.servers[s].switch]
        if sequential:
            for s, t in todo:
                await push(s, t)
        else:
            await asyncio.gather(*(push(s, t) for s, t in todo))

    # --- scaling --------------------------------------------------------------------------------
    async def scale(self, nf: str, n: int, reason: str = "by request") -> None:
        """Resize ``nf`` to ``n`` instances: new ones are placed incrementally and take new flows;
        removed ones drain (no new flows; stopped once their flows ended)."""
        async with self._lock:
            plan = self.plan_
            assert plan is not None
            cur = [i for i in plan.instances_of(nf) if self.states.get(i, "running") != "draining"]
            if n == len(cur):
                return
            t_decided = time.monotonic()
            if n > len(cur):
                new_plan = plan.scale(nf, len(plan.instances_of(nf)) + (n - len(cur)))
                added = [i for i in new_plan.instances_of(nf) if i not in plan.instances_of(nf)]
                self.plan_ = new_plan
                for inst in added:
                    await self._spawn_instance(inst, new_plan.assignment[inst])
                await self._until_ready(added)
                await self._push_tables()
                self._event(nf, "scale-out", f"{len(cur)} -> {n} ({reason}); new: "
                            + ", ".join(f"{i}@{new_plan.assignment[i]}" for i in added)
                            + f"; in service after {(time.monotonic() - t_decided) * 1e3:.0f} ms", at=t_decided)
            else:
                victims = sorted(cur, key=lambda i: int(i.partition("#")[2]))[n - len(cur):]
                for v in victims:
                    self.states[v] = "draining"
                    self._draining[v] = set(self.servers)
                    self._drain_started[v] = time.monotonic()
                await self._push_tables()
                self._event(nf, "scale-in", f"{len(cur)} -> {n} ({reason}); draining: {', '.join(victims)}",
                            at=t_decided)
            self.autoscaler.changed(nf, time.monotonic())

    def _on_drained(self, msg: Drained) -> None:
        pending = self._draining.get(msg.instance)
        if pending is None:
            return
        pending.discard(msg.server)
        if not pending:
            asyncio.get_running_loop().create_task(self._retire(msg.instance))

    async def _retire(self, inst: str) -> None:
        async with self._lock:
            if inst not in self._draining:
                return
            del self._draining[inst]
            self._drain_started.pop(inst, None)
            plan = self.plan_
            assert plan is not None and self.node is not None
            nf = nf_of(inst)
            keep = [i for i in plan.instances_of(nf) if i != inst]
            # Plan.scale drops the highest-numbered instances: that is the one draining.
            self.plan_ = plan.scale(nf, len(keep))
            if inst in self.plan_.assignment or set(self.plan_.instances_of(nf)) != set(keep):
                log.warning("retiring %s: the plan removed a different instance", inst)
            server = plan.assignment[inst]
            try:
                stats = await self.node.ask(self.instances[inst], GetStats(), timeout=2)
                self._final_instances[inst] = {**stats, "server": server, "retired": True}
            except Exception:
                pass
            self.states.pop(inst, None)
            ref = self.instances.pop(inst, None)
            await self._push_tables()
            if ref is not None:
                try:
                    await self.node.ask(self.node.system_ref(ref.node), StopActor(ref.name), timeout=5)
                except Exception as exc:
                    log.warning("stopping %s: %r", inst, exc)
            self.autoscaler.forget(nf, inst)
            self._event(nf, "retired", f"{inst} drained and stopped")

    def _on_report(self, r: LoadReport) -> None:
        self.autoscaler.report(r.nf, r.instance, r.busy, r.drops, time.monotonic())
        self._busy[r.instance] = (r.busy, time.monotonic())

    def _on_final_stats(self, msg: FinalStats) -> None:
        if self.plan_ is not None and msg.instance in self.plan_.assignment and isinstance(msg.stats, dict):
            self._final_instances[msg.instance] = {**msg.stats, "server": self.plan_.assignment[msg.instance]}

    def _on_switch_load(self, msg: SwitchLoad) -> None:
        for inst, n in msg.congestion:
            self.autoscaler.congested(nf_of(inst), inst, n)

    def _on_node_lost(self, msg: NodeLost) -> None:
        self.recovery.on_node_lost(msg)

    # --- changing a running deployment (see changes.py) ------------------------------------------
    async def move(self, instance: str, server: str) -> float:
        """Move ``instance`` to ``server`` with its state; returns how long its packets were held."""
        from e2actors.manager.changes import move

        return await move(self, instance, server)

    async def update(self, policy: Policy, dry_run: bool = False) -> Any:
        """Apply a new policy live as one transaction; returns the :class:`PolicyDiff`."""
        from e2actors.manager.changes import update

        return await update(self, policy, dry_run=dry_run)

    async def upgrade(self, nf: str, cls: str, config: dict[str, Any] | None = None) -> Any:
        """Replace ``nf``'s pipelet class live; the new instances take over the old ones' state."""
        from e2actors.manager.changes import upgrade

        return await upgrade(self, nf, cls, config)

    async def rebalance(self) -> tuple[str, str, str] | None:
        """One move evening out the servers' load (instance, from, to), or None."""
        from e2actors.manager.changes import rebalance

        return await rebalance(self, self.rebalance_threshold)

    async def _tick(self) -> None:
        now = time.monotonic()
        for inst, t0 in list(self._drain_started.items()):
            if now - t0 > 30 and inst in self._draining:  # a switch never answered: retire anyway
                self._draining[inst] = set()
                asyncio.get_running_loop().create_task(self._retire(inst))
        if self.rebalance_enabled and self.deployed and not self._lock.locked() \
                and now - self._last_rebalance >= self.rebalance_every:
            self._last_rebalance = now
            asyncio.get_running_loop().create_task(self._rebalance_quietly())
        if not (self.autoscale and self.deployed and self.plan_ is not None) or self._lock.locked():
            return
        for nf, spec in self.plan_.policy.nfs.items():
            if spec.inline:
                continue
            cur = [i for i in self.plan_.instances_of(nf) if self.states.get(i) != "draining"]
            if any(self.states.get(i) == "draining" for i in self.plan_.instances_of(nf)):
                continue  # one change at a time per group
            lo = spec.min_instances
            shards = self.plan_.hardware.shards
            if shards:  # an instance in every shard, or its flows would cross to another one
                lo = max(lo, min(len(shards), spec.max_instances or len(shards)))
            d = self.autoscaler.decide(nf, len(cur), lo, spec.max_instances, now)
            if d is None:
                continue
            try:
                await self.scale(nf, d.target, reason=d.reason)
            except E2Error as exc:
                self._event(nf, "scale-failed", str(exc))
                self.autoscaler.changed(nf, now)

    async def _rebalance_quietly(self) -> None:
        try:
            await self.rebalance()
        except Exception as exc:
            self._event("*", "rebalance-failed", repr(exc))
        self._last_rebalance = time.monotonic()

    def _event(self, nf: str, kind: str, detail: str, at: float | None = None) -> None:
        e = Event((at if at is not None else time.monotonic()) - self.t0, nf, kind, detail)
        self.events.append(e)
        log.info("%s %s: %s", nf, kind, detail)

    # --- observing ------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """Live counters of every switch and instance (one round of asks)."""
        assert self.node is not None
        node = self.node

        async def ask(ref: ActorRef, msg: Any) -> Any:
            try:
                return await node.ask(ref, msg, timeout=5)
            except Exception as exc:
                return {"error": repr(exc)}

        sw_names = [n for n, s in self.servers.items() if s.switch is not None]
        sw = await asyncio.gather(*(ask(self.servers[n].switch, GetSwitchStats()) for n in sw_names))  # type: ignore[arg-type]
        inames = list(self.instances)
        ins = await asyncio.gather(*(ask(self.instances[i], GetStats()) for i in inames))
        out = {"switches": dict(zip(sw_names, sw)), "instances": dict(zip(inames, ins)),
               "t": time.monotonic() - self.t0}
        self._last_stats = out
        return out

    async def traces(self) -> list[dict[str, Any]]:
        """Paths of the sampled packets (``trace_every``), from every switch."""
        from e2actors.switch.messages import GetTraces

        assert self.node is not None
        out: list[dict[str, Any]] = []
        for srv in self.servers.values():
            if srv.switch is not None:
                try:
                    out.extend(await self.node.ask(srv.switch, GetTraces(), timeout=5))
                except Exception:
                    pass
        return out

    def _tell_input_done(self) -> None:
        """Every input is exhausted: tell the switches and instances, whose replay clocks then go
        on with the wall clock (what waits on a timeout leaves now, not after their idle grace)."""
        from e2actors.nf.messages import InputDone

        self._input_told = True
        node = self.node
        assert node is not None
        for ref in [*(s.switch for s in self.servers.values() if s.switch is not None), *self.instances.values()]:
            try:
                node.send(ref, InputDone())
            except E2Error:
                pass

    async def close_inputs(self, drain: float = 5.0) -> bool:
        """Stop reading input everywhere (the end of a live run, or a stop asked for) and wait up
        to ``drain`` seconds for what is in the deployment to leave; True when it all did."""
        from e2actors.switch.messages import CloseInputs

        assert self.node is not None
        for srv in self.servers.values():
            if srv.switch is not None:
                try:
                    await self.node.ask(srv.switch, CloseInputs(), timeout=5)
                except Exception as exc:
                    log.warning("closing the inputs of %s: %r", srv.name, exc)
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
        for server, s in st.get("switches", {}).items():
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
        for inst, i in {**self._final_instances, **live}.items():
            if not isinstance(i, dict) or "packets_in" not in i:
                continue
            server = plan.assignment.get(inst, i.get("server", "?")) if plan else "?"
            instances[inst] = {"nf": nf_of(inst), "server": server, "in": i["packets_in"], "out": i["packets_out"],
                               "dropped": i["dropped"], "refused_batches": i.get("mailbox_dropped", 0),
                               "lost": i["lost"],
                               "errors": i["errors"], "flows": i["flows"], "per_port": i["per_port"],
                               "counters": dict(i.get("counters", {})),
                               "state": self.states.get(inst, "retired" if i.get("retired") else "running"),
                               "restarts": i.get("restarts", 0),
                               "busy_seconds": round(i["busy_seconds"], 4)}
            for reason, n in i.get("drops", {}).items():
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
        packets_in = ports.get("in", {}).get("rx_packets", 0)
        packets_out = ports.get("out", {}).get("tx_packets", 0)
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
            + ([f"{lost:,} packets admitted and never accounted for"] if lost else []),
        }

    # --- stopping -------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop switches, instances and workers."""
        if self.node is not None:
            # Instances first, each with its teardown (files closed, a logger group's parts
            # merged), wherever they run: an agent outlives the run.
            node = self.node

            async def stop_one(ref: ActorRef) -> None:
                try:
                    await node.ask(node.system_ref(ref.node), StopActor(ref.name), timeout=5)
                except Exception as exc:
                    log.debug("stopping %s: %r", ref, exc)

            await asyncio.gather(*(stop_one(r) for r in list(self.instances.values()) if r.node != node.address))
            for srv in self.servers.values():
                if srv.switch is not None and srv.node_address != self.node.address:
                    try:
                        await self.node.ask(self.node.system_ref(srv.node_address), StopActor(srv.switch.name), timeout=30)
                    except Exception:
                        pass
            await self._merge_on_agents()
            await self.node.stop()
        for proc in self._lost_procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for srv in self.servers.values():
            if srv.proc is not None:
                try:
                    srv.proc.stdin.close()  # type: ignore[union-attr]
                    srv.proc.wait(30)  # (a busy machine: its ports flush and close first)
                except Exception:
                    srv.proc.kill()
        self._merge_outputs()
        # (the workers' sockets and the secret file made for them)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.started = False

    async def _merge_on_agents(self) -> None:
        """An agent's machine that ran several switch processes merges their parts of an output
        file there (after the switches closed them), then its extra processes end."""
        from e2actors.runtime.shardhost import MergeParts

        plan = self.plan_
        node = self.node
        if plan is None or node is None or not self._shard_hosts:
            return
        for parent, host in self._shard_hosts.items():
            servers = tuple(n for n, s in plan.hardware.servers.items() if n == parent or s.shard_of == parent)
            for p in plan.hardware.ports.values():
                if p.kind == "pcap-out" and p.params.get("path"):
                    try:
                        await node.ask(host, MergeParts(str(p.params["path"]), servers), timeout=120)
                    except Exception as exc:
                        log.warning("merging %s on %s: %r", p.params["path"], parent, exc)
            try:
                await node.ask(node.system_ref(host.node), StopActor(host.name), timeout=30)
            except Exception as exc:
                log.warning("stopping the switch processes of %s: %r", parent, exc)
        self._shard_hosts.clear()

    def _merge_outputs(self) -> None:
        """Sharded runs write each output pcap in parts, one per shard: merge them into the file
        asked for (by timestamp; each flow's packets keep their order)."""
        plan = self.plan_
        if plan is None or not plan.hardware.shards or any(s.address for s in plan.hardware.servers.values()):
            return  # (an agent's machine merges its own: _merge_on_agents)
        from e2actors.manager.shards import merge_captures, shard_path

        for p in plan.hardware.ports.values():
            path = p.params.get("path")
            if p.kind == "pcap-out" and path:
                parts = [shard_path(str(path), s) for s in plan.hardware.shards]
                if any(os.path.exists(x) for x in parts):
                    merge_captures(parts, str(path))


def _is_congestion(reason: str) -> bool:
    """Drops for lack of room in the middle of a chain (never an NF's or the policy's decision)."""
    r = reason.partition(": ")[2] if reason.startswith("switch: ") else ""
    return r in ("queue full", "hold overflow") or (r.startswith("link to ") and r.endswith(" congested")) \
        or (r.startswith("instance ") and r.endswith(" stalled"))


_ERROR_KINDS = ("failed", "node-lost", "update-failed", "scale-failed", "rebalance-failed")


async def check_agent(node: Node, name: str, address: str, cores: int, timeout: float = 10.0) -> Any:
    """Connect to the agent of server ``name`` and check it before deploying anything on it: it
    authenticates (shared secret, and TLS when configured), runs our version, and offers at least
    the ``cores`` the hardware file gives the server. Raises :class:`E2Error` saying what is wrong."""
    from e2actors._version import __version__
    from e2actors.errors import AuthError, TransportError
    from e2actors.runtime.messages import GetNodeInfo

    try:
        await asyncio.wait_for(node.connect(address), timeout)
    except AuthError as exc:
        raise E2Error(f"agent of server {name} at {address} refused us: authentication failed "
                      f"(wrong shared secret, or TLS on one side only): {exc}") from None
    except (TransportError, OSError, asyncio.TimeoutError) as exc:
        raise E2Error(f"agent of server {name} at {address} is unreachable: {exc or type(exc).__name__}") from None
    try:
        info = await node.ask(node.system_ref(address), GetNodeInfo(), timeout=timeout)
    except Exception as exc:
        raise E2Error(f"agent of server {name} at {address} does not describe itself: {exc}") from None
    if info.version != __version__:
        raise E2Error(f"agent of server {name} at {address} runs e2actors {info.version}, "
                      f"the manager {__version__}: run the same version everywhere")
    if info.cores < cores:
        raise E2Error(f"agent of server {name} at {address} offers {info.cores} cores, "
                      f"the hardware file gives it {cores}")
    log.info("agent %s at %s: %s, e2actors %s, %d cores, pid %d", name, address, info.name, info.version,
             info.cores, info.pid)
    return info


def resolve_config(config: dict[str, Any], base: str) -> dict[str, Any]:
    """Relative paths in an NF's config that name existing files are the policy directory's
    (rules files); others (outputs such as a logger's pcap) stay relative to the cwd."""

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not os.path.isabs(v) and "\n" not in v:
            p = os.path.join(base, v)
            if os.path.isfile(p):
                return os.path.abspath(p)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in config.items()}


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
