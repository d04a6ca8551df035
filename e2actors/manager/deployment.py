"""The deployment: what runs where, and the only code that talks to its nodes.

A :class:`Deployment` owns the running plan, the servers (their nodes, switches and worker
processes), the instance actors and their states (``running``, ``moving``, ``draining``,
``failed``), the table version, the event log, the generation counter that names replacement
actors, and the lock that makes changes one at a time. Everything that changes a deployment
(:class:`~e2actors.manager.manager.Manager`'s scaling, :mod:`~e2actors.manager.changes`'
transactions, :mod:`~e2actors.manager.recovery`) reads that state here and changes it through
the methods here:

* one way to start an actor on a server (:meth:`Deployment.spawn`, :meth:`spawn_instance`,
  :meth:`start_switches`) and one way to stop one (:meth:`stop`, :meth:`retire` when its final
  counters matter);
* :meth:`tables` / :meth:`tables_for` number each table set and :meth:`push_tables` installs it;
* :meth:`record` appends to the event log (the summary's ``scaling_events``);
* :meth:`spawn_task` runs background work (failure handling, retiring drained instances) in a
  task the deployment keeps, and :meth:`stop_all` cancels and awaits those before stopping the
  actors.

The pure decisions live elsewhere (:mod:`~e2actors.manager.diff`, :mod:`~e2actors.manager.drain`,
:mod:`~e2actors.manager.rebalance`, :mod:`~e2actors.manager.scaling`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import Any, TypeVar

from e2actors._version import __version__
from e2actors.errors import AuthError, ChangeFailed, E2Error, MailboxFull, SpawnRefused, TransportError
from e2actors.manager.checkpoint import Checkpoints
from e2actors.manager.hardware import Hardware, Server
from e2actors.manager.instances import nf_of
from e2actors.manager.plan import Plan
from e2actors.manager.policy import NFSpec, resolve_config
from e2actors.manager.routing import fanout_group, tables_from
from e2actors.manager.routing import groups as route_groups
from e2actors.nf.messages import GetStats
from e2actors.runtime.messages import GetNodeInfo, NodeInfo, Spawn, StopActor
from e2actors.runtime.node import Node, load_class
from e2actors.runtime.ref import ActorRef
from e2actors.manager.shardhost import MergeParts, StartShards
from e2actors.switch.messages import SetTable
from e2actors.switch.table import Route, SwitchTable

__all__ = ["MAIN", "Deployment", "Event", "ServerHandle", "check_agent"]

log = logging.getLogger("e2actors.manager")

#: The manager's own server (its node; the ports when the workers only run instances).
MAIN = "main"
INSTANCE_CLASS = "e2actors.nf.instance:NFInstance"
SWITCH_CLASS = "e2actors.switch.switch:Switch"
SHARD_HOST_CLASS = "e2actors.manager.shardhost:ShardHost"

T = TypeVar("T")


@dataclass
class Event:
    """One entry of the event log: when (seconds since the deployment started), which NF
    (``*``: the whole deployment), what kind (``deploy``, ``scale-out``, ``move``, ``failed``...)."""

    t: float
    nf: str
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "nf": self.nf, "kind": self.kind, "detail": self.detail}


@dataclass
class ServerHandle:
    """A server of the deployment: its node's address, its switch, its worker process if we
    started one."""

    name: str
    node_address: str
    switch: ActorRef | None = None
    proc: subprocess.Popen | None = None
    remote: bool = False  # an agent named by address in the hardware file (not this run's own)


class Deployment:
    """The state of one running deployment and the calls to its nodes (see the module docstring).

    ``allow``: class prefixes the agents may load; ``secret``: written for the worker processes;
    ``workers``: whether servers without an address are worker processes started here (else they
    all run on this node); ``report_interval``: how often instances send load reports."""

    def __init__(self, *, allow: tuple[str, ...], secret: bytes, heartbeat_timeout: float = 3.0,
                 report_interval: float = 0.25, workers: bool = False) -> None:
        self.allow = allow
        self.secret = secret
        self.heartbeat_timeout = heartbeat_timeout
        self.report_interval = report_interval
        self.workers = workers
        self.node: Node | None = None
        #: The manager actor: it watches the instances and receives their reports.
        self.monitor: ActorRef | None = None
        #: ``packet`` while replaying a capture as fast as possible, else ``wall`` (see Manager.clock).
        self.clock = "wall"
        self._plan: Plan | None = None
        self._servers: dict[str, ServerHandle] = {}
        self._instances: dict[str, ActorRef] = {}
        self._states: dict[str, str] = {}
        self._version = 0
        self._gen = 0  # numbers the actors that replace instances (moves, upgrades, recovery)
        #: The event log (the summary's ``scaling_events``).
        self.events: list[Event] = []
        self.t0 = time.monotonic()
        #: Held by every change (scaling, transactions, recovery): one at a time.
        self.lock = asyncio.Lock()
        #: Final counters of instances no longer running (retired, replaced), for the summary.
        self.retired: dict[str, dict[str, Any]] = {}
        #: The latest checkpoint of each member whose NF takes them (``checkpoint:``).
        self.checkpoints = Checkpoints()
        #: How long the last move held its instance's packets (seconds).
        self.last_move_pause = 0.0
        self._shard_hosts: dict[str, ActorRef] = {}  # an agent's server -> its ShardHost
        self._tasks: set[asyncio.Task] = set()
        self._lost_procs: list[subprocess.Popen] = []
        #: Node address -> the names of the actors this deployment spawned there (what fencing stops).
        self._spawned: dict[str, set[str]] = {}
        #: Server -> ``[[shard, from], ...]``: the shards of lost switches whose input it takes over
        #: (its input port's ``adopt`` parameter, see :class:`~e2actors.switch.ports.PcapInPort`).
        self.adopt: dict[str, list[list[int]]] = {}
        #: The last counters read from each switch and instance (:meth:`note_stats`): what is
        #: known of a server after it is lost.
        self.last_switch_stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._instance_rounds: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self._tmpdir: str | None = None  # (made when a worker needs it: a plan alone leaves nothing)
        self._switch_kwargs: dict[str, Any] = {}

    def attach(self, node: Node, monitor: ActorRef) -> None:
        """The manager's node (every call to the other nodes goes out from it) and actor."""
        self.node, self.monitor = node, monitor

    # --- the state (read here; changed through the methods below) ---------------------------------
    @property
    def plan(self) -> Plan | None:
        """The plan in force (None before deploying)."""
        return self._plan

    @property
    def servers(self) -> Mapping[str, ServerHandle]:
        return MappingProxyType(self._servers)

    @property
    def instances(self) -> Mapping[str, ActorRef]:
        """Member name (``nat#1``) -> its actor (``nat#1``, or ``nat#1~3`` once replaced)."""
        return MappingProxyType(self._instances)

    @property
    def states(self) -> Mapping[str, str]:
        return MappingProxyType(self._states)

    @property
    def version(self) -> int:
        """The version of the last table set built."""
        return self._version

    def set_plan(self, plan: Plan) -> None:
        self._plan = plan

    def add_instance(self, inst: str, ref: ActorRef, state: str = "running") -> None:
        self._instances[inst] = ref
        self._states[inst] = state

    def set_state(self, inst: str, state: str) -> None:
        self._states[inst] = state

    def remove_instance(self, inst: str) -> ActorRef | None:
        """Forget member ``inst`` (its actor and state); returns its actor."""
        self._states.pop(inst, None)
        return self._instances.pop(inst, None)

    def mark_failed(self, inst: str) -> ActorRef | None:
        """Member ``inst`` stays in the tables as ``failed`` with no actor; returns the actor it had."""
        self._states[inst] = "failed"
        return self._instances.pop(inst, None)

    def next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def record(self, nf: str, kind: str, detail: str, at: float | None = None) -> Event:
        """Append an event (``at``: when it happened, ``time.monotonic()``; default now)."""
        e = Event((at if at is not None else time.monotonic()) - self.t0, nf, kind, detail)
        self.events.append(e)
        log.info("%s %s: %s", nf, kind, detail)
        return e

    # --- servers ----------------------------------------------------------------------------------
    async def start_servers(self, hardware: Hardware) -> None:
        """Reach every server of ``hardware`` not yet known: an agent by address (checked), this
        node, or a worker process started here."""
        node = self._need_node()
        for name, srv in hardware.servers.items():
            if name in self._servers:
                continue
            if srv.shard_of:
                continue  # (started by its machine's agent, below)
            if srv.address:
                addr = srv.address if "://" in srv.address else f"tcp://{srv.address}"
                await check_agent(node, name, addr, srv.cores)
                self._servers[name] = ServerHandle(name, addr, remote=True)
            elif name == MAIN or (not self.workers and len(hardware.servers) == 1):
                self._servers[name] = ServerHandle(name, node.address)
            else:
                self._servers[name] = await self._start_worker(name, srv.cores)
        await self._start_shards(hardware)

    async def _start_shards(self, hardware: Hardware) -> None:
        """Servers that are more switch processes of an agent's machine (``switches: N``): its
        agent starts them (a :class:`~e2actors.manager.shardhost.ShardHost`), then each is checked
        like any agent."""
        node = self._need_node()
        by_parent: dict[str, list[Server]] = {}
        for name, srv in hardware.servers.items():
            if srv.shard_of and name not in self._servers:
                by_parent.setdefault(srv.shard_of, []).append(srv)
        for parent, shards in by_parent.items():
            paddr = self._servers[parent].node_address
            host = await self.spawn(parent, SHARD_HOST_CLASS, f"shardhost-{parent}", {})
            self._shard_hosts[parent] = host
            addrs = await node.ask(host, StartShards(tuple(s.name for s in shards), shards[0].cores), timeout=60)
            for srv, addr in zip(shards, addrs):
                if addr.startswith("tcp://") and paddr.startswith("tcp://"):
                    # (a shard listening on all interfaces is reached where its agent is)
                    host_part = paddr[len("tcp://"):].rsplit(":", 1)[0]
                    addr = f"tcp://{host_part}:{addr.rsplit(':', 1)[1]}"
                await check_agent(node, srv.name, addr, srv.cores)
                self._servers[srv.name] = ServerHandle(srv.name, addr, remote=True)

    async def merge_on_agents(self) -> None:
        """An agent's machine that ran several switch processes merges their parts of an output
        file there (after the switches closed them), then its extra processes end."""
        plan, node = self._plan, self.node
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
            await self.stop(host, timeout=30)
        self._shard_hosts.clear()

    async def _start_worker(self, name: str, cores: int) -> ServerHandle:
        secret_file = os.path.join(self._tmp(), "secret")
        if not os.path.exists(secret_file):
            with open(secret_file, "wb") as f:
                f.write(self.secret)
            os.chmod(secret_file, 0o600)
        sock = f"unix://{self._tmp()}/{name}.sock"
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
        await self._need_node().connect(addr)
        return ServerHandle(name, addr, proc=proc)

    def drop_server(self, name: str) -> ServerHandle | None:
        """Server ``name`` is gone (its node lost): forget it (its process is reaped at the end)."""
        srv = self._servers.pop(name, None)
        if srv is not None and srv.proc is not None:
            self._lost_procs.append(srv.proc)
        return srv

    async def kill_worker(self, srv: ServerHandle, timeout: float = 10.0) -> int | None:
        """Fence a lost worker process this deployment started: SIGKILL (a stopped process dies
        of it too) and wait until it is gone. Returns its exit status (None: still there)."""
        proc = srv.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, proc.wait, timeout)
        except subprocess.TimeoutExpired:
            log.error("worker %s (pid %d) is still there %.0fs after SIGKILL", srv.name, proc.pid, timeout)
            return None

    def readmit_server(self, name: str, address: str) -> ServerHandle:
        """Server ``name`` (an agent at ``address``) is back as fresh capacity: known again, with
        no switch yet (:meth:`start_switches` gives it one)."""
        srv = self._servers[name] = ServerHandle(name, address, remote=True)
        return srv

    @property
    def attached(self) -> bool:
        """Whether the deployment has its node (:meth:`attach`): it can start and reach actors."""
        return self.node is not None

    def quarantine(self, address: str) -> None:
        """Ignore what the node at ``address`` (a lost server) still sends, until :meth:`release`."""
        self._need_node().quarantine(address)

    def release(self, address: str) -> None:
        """End :meth:`quarantine` of ``address`` (it was fenced: nothing stale runs there)."""
        self._need_node().release(address)

    async def probe(self, address: str, timeout: float) -> NodeInfo:
        """Connect to the node at ``address`` (a connection attempt: a node still paused is not
        declared lost again) and ask what it runs. Raises what the attempt or the ask raised."""
        node = self._need_node()
        await asyncio.wait_for(node.connect(address), timeout)
        return await node.ask(node.system_ref(address), GetNodeInfo(), timeout=timeout)

    def spawned_on(self, address: str) -> set[str]:
        """Names of the actors this deployment spawned on the node at ``address``."""
        return set(self._spawned.get(address, ()))

    def note_stats(self, switches: Mapping[str, Any], instances: Mapping[str, Any], t_asked: float,
                   t_answered: float) -> None:
        """One round of counters (asked at ``t_asked``, all answered by ``t_answered``,
        ``time.monotonic()``): kept as the last known of each switch and instance."""
        for server, st in switches.items():
            if isinstance(st, dict) and "ports" in st:
                self.last_switch_stats[server] = (t_asked, st)
        ins = {k: v for k, v in instances.items() if isinstance(v, dict) and "packets_in" in v}
        self._instance_rounds = [*self._instance_rounds[-1:], (t_answered, ins)]

    def last_instance_stats(self, before: float) -> dict[str, dict[str, Any]]:
        """The last round of instance counters that was complete at ``before`` (else the oldest kept)."""
        rounds = [r for t, r in self._instance_rounds if t <= before]
        if rounds:
            return rounds[-1]
        return self._instance_rounds[0][1] if self._instance_rounds else {}

    def server_of_node(self, address: str) -> str | None:
        """The server whose node is at ``address``."""
        return next((n for n, s in self._servers.items() if s.node_address == address), None)

    def switches(self) -> dict[str, ActorRef]:
        """Server -> its switch, for the servers that have one."""
        return {n: s.switch for n, s in self._servers.items() if s.switch is not None}

    # --- starting and stopping actors -------------------------------------------------------------
    async def spawn(self, server: str, cls: str, name: str, kwargs: dict[str, Any]) -> ActorRef:
        """Start an actor of class ``cls`` (``module:QualName``) named ``name`` on ``server``.
        Raises :class:`SpawnRefused` saying which server refused which class."""
        node = self._need_node()
        srv = self._servers[server]
        if srv.node_address == node.address:
            return node.spawn(load_class(cls, self.allow), name, **kwargs)
        self._spawned.setdefault(srv.node_address, set()).add(name)
        try:
            return await node.ask(node.system_ref(srv.node_address), Spawn(cls, name, kwargs), timeout=10)
        except SpawnRefused as exc:  # the agent said no: say which server, and why
            why = str(exc)
            if "allow-list" in why:
                what = kwargs.get("pipelet", cls)
                if srv.proc is not None:  # a worker process this run started: its list was fixed then
                    raise SpawnRefused(f"worker {server} (started by this run) may not load {what}: {why} (a "
                                       "module the policy did not name when the workers started: give it to "
                                       "Manager(allow=...) up front)") from None
                raise SpawnRefused(f"the agent of server {server} at {srv.node_address} refused to load "
                                   f"{what}: {why} (start that agent with --allow MODULE to permit)") from None
            raise SpawnRefused(f"the agent of server {server} at {srv.node_address} refused {why}") from None

    async def start_switches(self, **kwargs: Any) -> None:
        """A switch on every server that has none (``kwargs``: the switch's settings; kept for
        the switches of servers re-admitted later)."""
        self._switch_kwargs = dict(kwargs)
        for name, srv in self._servers.items():
            if srv.switch is None:
                # (a re-admitted server's new switch gets a fresh name: the old one was fenced)
                actor = f"switch-{name}" if not self.spawned_on(srv.node_address) else f"switch-{name}~{self.next_gen()}"
                srv.switch = await self.spawn(name, SWITCH_CLASS, actor,
                                              {"server": name, "manager": self.monitor, **self._switch_kwargs})

    async def spawn_instance(self, inst: str, server: str, spec: NFSpec, base_dir: str = ".", *,
                             replacement: bool = False) -> ActorRef:
        """Start the actor of member ``inst`` of NF ``spec`` on ``server`` and watch it (the
        monitor gets ``Terminated``). A ``replacement`` (moves, upgrades, recovery) runs under a
        fresh actor name (``nat#1~3``) and is ready when this returns (its ``setup`` ran; else
        :class:`ChangeFailed`, and it is stopped). The caller adds it with :meth:`add_instance`."""
        node = self._need_node()
        name = f"{inst}~{self.next_gen()}" if replacement else inst
        ref = await self.spawn(server, INSTANCE_CLASS, name,
                               {"pipelet": spec.cls, "config": self.config_for(server, spec.config, base_dir),
                                "nf": nf_of(inst), "output": self._servers[server].switch, "monitor": self.monitor,
                                "report_interval": self.report_interval, "instance": inst,
                                "clock": "replay" if self.clock == "packet" else "wall"})
        if replacement:
            try:
                await node.ask(ref, GetStats(), timeout=10)
            except Exception as exc:
                await self.stop(ref)
                raise ChangeFailed(f"{inst} on {server} did not start: {exc}") from exc
        self.watch(ref)
        return ref

    def config_for(self, server: str, config: dict[str, Any], base_dir: str | None = None) -> dict[str, Any]:
        """An NF's config as sent to ``server``. In this process and to its workers, relative paths
        that name files next to the policy (``base_dir``, default the plan's) become absolute
        (rules files). An agent named in the hardware file gets them as written: it takes them
        from its own data directory."""
        srv = self._servers.get(server)
        if srv is not None and srv.remote:
            return dict(config)
        if base_dir is None:
            base_dir = self._plan.policy.base_dir if self._plan is not None else "."
        return resolve_config(config, base_dir)

    async def until_ready(self, insts: Iterable[str], timeout: float = 120.0) -> None:
        """Wait until these members' actors ran their setup (a vport NF's program can take
        seconds to start), so that no switch sends them flows before. One that fails to start is
        left to recovery (its Terminated message)."""
        node = self._need_node()

        async def ready(ref: ActorRef) -> None:
            try:
                await node.ask(ref, GetStats(), timeout=timeout)
            except Exception as exc:
                log.debug("instance %s did not become ready: %r", ref, exc)

        await asyncio.gather(*(ready(self._instances[i]) for i in insts if i in self._instances))

    def allow_modules(self, modules: Iterable[str]) -> None:
        """Modules this process and its workers may load actors from, besides :attr:`allow`."""
        self.allow = tuple(dict.fromkeys(self.allow + tuple(sorted(m for m in modules if m))))
        if self.node is not None:
            self.node.allow_spawn = self.allow

    def keep_final(self, inst: str, stats: dict[str, Any]) -> None:
        """An instance's counters as it stopped (its ``FinalStats``), for the summary."""
        if self._plan is not None and inst in self._plan.assignment:
            self.retired[inst] = {**stats, "server": self._plan.assignment[inst]}

    def tell_all(self, msg: Any) -> None:
        """Send ``msg`` to every switch and instance (no reply; one that is gone is skipped)."""
        node = self._need_node()
        for ref in [*self.switches().values(), *self._instances.values()]:
            try:
                node.send(ref, msg)
            except E2Error:
                pass

    def watch(self, ref: ActorRef) -> None:
        self._need_node().watch(ref, self.monitor)  # type: ignore[arg-type]

    def unwatch(self, ref: ActorRef) -> None:
        self._need_node().unwatch(ref, self.monitor)  # type: ignore[arg-type]

    async def stop(self, ref: ActorRef, *, quiet: bool = False, timeout: float = 5.0) -> None:
        """Stop actor ``ref`` on its node (its teardown runs). Failures are logged, not raised."""
        node = self._need_node()
        try:
            await node.ask(node.system_ref(ref.node), StopActor(ref.name), timeout=timeout)
        except Exception as exc:
            (log.debug if quiet else log.warning)("stopping %s: %r", ref, exc)

    async def retire(self, inst: str, ref: ActorRef, server: str, why: str, key: str | None = None) -> None:
        """Keep actor ``ref``'s final counters for the summary (under ``key``, default a fresh
        ``inst~N``), stop watching it, and stop it."""
        node = self._need_node()
        try:
            st = await node.ask(ref, GetStats(), timeout=3)
            self.retired[key or f"{inst}~{self.next_gen()}"] = {**st, "server": server, "retired": why}
        except Exception:
            pass
        self.unwatch(ref)
        await self.stop(ref)

    # --- switch tables ------------------------------------------------------------------------------
    def tables(self) -> dict[str, SwitchTable]:
        """A new version of every switch's table, from the plan in force."""
        plan = self._need_plan()
        self._version += 1
        return self._adopting(plan.tables(self._version, refs=self._instances, switches=self.switches(),
                                          states=self._states, clock=self.clock))

    def tables_for(self, routes: tuple[Route, ...], nfs: Mapping[str, NFSpec], assignment: Mapping[str, str],
                   refs: Mapping[str, ActorRef], states: Mapping[str, str]) -> dict[str, SwitchTable]:
        """A new version of every switch's table from explicit parts (a transaction's in-between
        tables: routes and members of the old and the new plan at once)."""
        plan = self._need_plan()
        hw = plan.hardware
        self._version += 1
        gs = route_groups(SimpleNamespace(nfs=nfs), dict(assignment), dict(refs), dict(states),  # type: ignore[arg-type]
                          sharded=bool(hw.shards))
        switches = self.switches()
        # (the same ports, credit origins, shard parameters and clock as the tables of the plan)
        return self._adopting(tables_from(hw, self._version, routes, gs, switches, self.clock,
                                          fanout_group(plan.policy, hw), servers=tuple(switches)))

    def _adopting(self, tables: dict[str, SwitchTable]) -> dict[str, SwitchTable]:
        """Tables whose replayed input also keeps the shards of lost switches (:attr:`adopt`)."""
        if not self.adopt:
            return tables
        out = dict(tables)
        for server, adopt in self.adopt.items():
            t = out.get(server)
            if t is None:
                continue
            ports = tuple(dataclasses.replace(p, params={**p.params, "adopt": [list(a) for a in adopt]})
                          if p.kind == "pcap-in" else p for p in t.ports)
            out[server] = dataclasses.replace(t, ports=ports)
        return out

    async def push_tables(self, tables: Mapping[str, SwitchTable] | None = None, *, first: Iterable[str] = (),
                          sequential: bool = False) -> None:
        """Install ``tables`` (default: a new version from the plan, :meth:`tables`) on every
        switch: ``first`` these servers before the others; ``sequential``: one at a time."""
        node = self._need_node()
        if tables is None:
            tables = self.tables()

        async def push(server: str, t: SwitchTable) -> None:
            t0 = time.monotonic()
            await node.ask(self._servers[server].switch, SetTable(t), timeout=10)  # type: ignore[arg-type]
            log.debug("table v%d on %s in %.1f ms", t.version, server, (time.monotonic() - t0) * 1e3)

        todo = [(s, t) for s, t in tables.items() if s in self._servers and self._servers[s].switch is not None]
        early = set(first)
        if sequential:
            for s, t in todo:
                await push(s, t)
            return
        if early:
            await asyncio.gather(*(push(s, t) for s, t in todo if s in early))
        await asyncio.gather(*(push(s, t) for s, t in todo if s not in early))

    # --- asking ---------------------------------------------------------------------------------------
    async def ask(self, ref: ActorRef, msg: Any, timeout: float = 5.0) -> Any:
        return await self._need_node().ask(ref, msg, timeout=timeout)

    async def ask_patiently(self, ref: ActorRef, msg: Any, timeout: float = 10.0) -> Any:
        """An ask that waits for room when the target's (dropping) mailbox is full."""
        node = self._need_node()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await node.ask(ref, msg, timeout=max(0.1, deadline - time.monotonic()))
            except MailboxFull:  # (here or on the target's node)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)

    async def ask_each(self, refs: Mapping[T, ActorRef], msg: Any, timeout: float = 5.0) -> dict[T, Any]:
        """Ask every actor of ``refs`` at once; key -> its reply, or the exception it raised."""
        keys = list(refs)
        replies = await asyncio.gather(*(self.ask(refs[k], msg, timeout) for k in keys), return_exceptions=True)
        return dict(zip(keys, replies))

    async def quiesce(self, refs: list[ActorRef], timeout: float = 3.0) -> None:
        """Wait until these instances have nothing queued and take nothing more (two quiet polls)."""
        node = self._need_node()
        last = None
        quiet = 0
        deadline = time.monotonic() + timeout
        while refs and time.monotonic() < deadline:
            try:
                sts = await asyncio.gather(*(node.ask(r, GetStats(), timeout=2) for r in refs))
            except Exception:
                return
            sig = tuple((s["packets_in"], s["queue"], s["held"]) for s in sts)
            if all(s["queue"] == 0 for s in sts) and sig == last:
                quiet += 1
                if quiet >= 2:
                    return
            else:
                quiet = 0
            last = sig
            await asyncio.sleep(0.05)

    # --- background work and the end -------------------------------------------------------------------
    def spawn_task(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task:
        """Run ``coro`` in a task the deployment keeps until it ends (and cancels at the end)."""
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", task.get_name(), task.exception())

    async def stop_all(self) -> None:
        """The end: cancel background work, then stop the instances (each with its teardown: files
        closed, a logger group's parts merged) and switches that run on other nodes (an agent
        outlives the run; actors on this node stop with it)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        node = self.node
        if node is None:
            return
        await asyncio.gather(*(self.stop(r, quiet=True) for r in list(self._instances.values())
                               if r.node != node.address))
        for srv in self._servers.values():
            if srv.switch is not None and srv.node_address != node.address:
                await self.stop(srv.switch, quiet=True, timeout=30)  # (a busy machine: its ports flush and close)
        await self.merge_on_agents()

    def reap(self) -> None:
        """After the node stopped: end the worker processes (lost ones killed), remove their
        sockets and the secret file made for them."""
        for proc in self._lost_procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for srv in self._servers.values():
            if srv.proc is not None:
                try:
                    srv.proc.stdin.close()  # type: ignore[union-attr]
                    srv.proc.wait(30)  # (a busy machine: its ports flush and close first)
                except Exception:
                    srv.proc.kill()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # --- internals ---------------------------------------------------------------------------------------
    def _tmp(self) -> str:
        """This deployment's private directory (worker sockets, the secret file), made on first use."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="e2actors-")
        return self._tmpdir

    def _need_node(self) -> Node:
        if self.node is None:
            raise E2Error("the manager is not started")
        return self.node

    def _need_plan(self) -> Plan:
        if self._plan is None:
            raise E2Error("nothing is deployed")
        return self._plan


async def check_agent(node: Node, name: str, address: str, cores: int, timeout: float = 10.0) -> NodeInfo:
    """Connect to the agent of server ``name`` and check it before deploying anything on it: it
    authenticates (shared secret, and TLS when configured), runs our version, and offers at least
    the ``cores`` the hardware file gives the server. Raises :class:`E2Error` saying what is wrong."""
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
