"""Changing a running deployment: moves with state, rebalancing, live policy updates, live upgrades.

Every change goes through one :class:`Transaction`, in phases, so that no packet is lost:

1. **spawn**: the new actors (instances of added NFs, and the replacements of instances that move
   or whose code or config changes) start and are probed (a ``GetStats`` ask: their ``setup`` ran).
   A refused or failing spawn stops what was spawned; nothing else has changed yet.
2. **prepare** (table version v+1): every switch learns the new groups' members (still under the
   old routes, so no packet goes there yet), and the members being replaced turn ``moving``: the
   switches hold their packets, in order.
3. **state**: each replaced instance's state is exported (the ask queues behind the batches the
   instance still has, so the state includes them) and imported by its replacement.
4. **switch over** (v+2): the new routes; replaced members ``running`` again at their new actor
   (and server): the switches release the held packets there; removed NFs are ``draining``
   members that keep their outbound routes, so what is still inside them comes out.
5. **commit**: the manager's plan becomes the new one; replaced actors are stopped. Once removed
   instances are quiet (empty queues), the final tables (v+3) leave them out and they are stopped.

A failure in phases 1-4 rolls back: the previous tables are pushed again under a newer version
(held packets go back to the old actors, which still hold their state) and spawned actors stop.

A *move* is a transaction with one replaced instance on another server; an *upgrade* is a policy
update that changes one NF's class; *rebalance* picks moves that even out the servers' load.
Replacements keep the member name (``nat#1``), so every switch's balancer keeps its flow table
and bucket ownership; only the actor (``nat#1~3``, a new name on its server) changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from e2actors.errors import E2Error, MailboxFull, PlacementError, PolicyError, RemoteError
from e2actors.manager.instances import InstanceGraph, instance_name, nf_of
from e2actors.manager.placement import Placement, place_incremental
from e2actors.manager.plan import Plan, _resized
from e2actors.manager.policy import IN, OUT, Edge, NFSpec, Policy
from e2actors.manager.routing import groups as route_groups
from e2actors.manager.routing import routes as policy_routes
from e2actors.manager.sizing import DEFAULT_UTILIZATION, size
from e2actors.nf.messages import ExportState, GetStats, ImportState
from e2actors.runtime.messages import StopActor
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import SetTable
from e2actors.switch.table import Route, SwitchTable

if TYPE_CHECKING:
    from e2actors.manager.manager import Manager

__all__ = ["ChangeFailed", "PolicyDiff", "Transaction", "diff_policies", "move", "pick_rebalance",
           "rebalance", "update", "upgrade"]

log = logging.getLogger("e2actors.manager.changes")

#: What may change in an NF while it runs (its instances are replaced, state carried over).
_REPLACEABLE = ("class", "config", "ports", "input")
#: What may not: the switches' balancers and inline runners are built around these.
_FIXED = ("affinity", "inline")


class ChangeFailed(E2Error):
    """A change could not be applied; the deployment was rolled back to what ran before."""


# --- the difference between two policies --------------------------------------------------------
def _edge_key(e: Edge) -> tuple:
    return (e.source, e.port or "", e.target, e.when, tuple(e.classes))


def _edge_text(e: Edge) -> str:
    s = f"{e.source}{'.' + e.port if e.port else ''} -> {e.target}"
    if e.when:
        s += f" when {e.when!r}"
    if e.classes:
        s += f" [class {', '.join(e.classes)}]"
    return s


@dataclass
class PolicyDiff:
    """What a policy update changes. ``instances_added`` maps each new instance to its server."""

    nfs_added: list[str] = field(default_factory=list)
    nfs_removed: list[str] = field(default_factory=list)
    #: NF -> what changed (``class``, ``config``, ...): its instances are replaced, state kept.
    nfs_changed: dict[str, list[str]] = field(default_factory=dict)
    edges_added: list[str] = field(default_factory=list)
    edges_removed: list[str] = field(default_factory=list)
    classes_changed: list[str] = field(default_factory=list)
    instances_added: dict[str, str] = field(default_factory=dict)
    instances_removed: list[str] = field(default_factory=list)
    instances_replaced: dict[str, str] = field(default_factory=dict)
    #: After the update: the version of the tables in force, how long it took, whether applied.
    applied: bool = False
    version: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def empty(self) -> bool:
        return not (self.nfs_added or self.nfs_removed or self.nfs_changed or self.edges_added
                    or self.edges_removed or self.classes_changed or self.instances_replaced)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """The difference, readably (``+`` added, ``-`` removed, ``~`` changed)."""
        if self.empty:
            return "no change"
        out: list[str] = []
        for n in self.nfs_added:
            out.append(f"+ nf {n}")
        for n in self.nfs_removed:
            out.append(f"- nf {n}")
        for n, what in self.nfs_changed.items():
            out.append(f"~ nf {n}: {', '.join(what)} (instances replaced, state carried over)")
        for e in self.edges_added:
            out.append(f"+ edge {e}")
        for e in self.edges_removed:
            out.append(f"- edge {e}")
        for c in self.classes_changed:
            out.append(f"~ class {c}")
        for i, s in self.instances_added.items():
            out.append(f"+ instance {i} on {s}")
        for i in self.instances_removed:
            out.append(f"- instance {i}")
        for i, s in self.instances_replaced.items():
            out.append(f"~ instance {i} on {s}")
        if self.applied:
            out.append(f"applied: tables v{self.version} in {self.seconds * 1000:.0f} ms")
        elif self.error:
            out.append(f"NOT applied (rolled back): {self.error}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """NFs, edges and classes added, removed or changed from ``old`` to ``new`` (instances are
    filled in by :func:`plan_update`). Raises :class:`PolicyError` for changes that cannot be
    made live (an NF's affinity or inline flag)."""
    d = PolicyDiff()
    d.nfs_added = [n for n in new.nfs if n not in old.nfs]
    d.nfs_removed = [n for n in old.nfs if n not in new.nfs]
    for n in new.nfs:
        if n not in old.nfs:
            continue
        a, b = old.nfs[n].to_dict(), new.nfs[n].to_dict()
        for k in _FIXED:
            if a[k] != b[k]:
                raise PolicyError(new.file, new.nfs[n].line,
                                  f"nf {n}: {k} cannot change while running ({a[k]} -> {b[k]}); "
                                  f"add the NF under another name and remove this one")
        what = [k for k in _REPLACEABLE if a.get(k) != b.get(k)]
        if what:
            d.nfs_changed[n] = what
    ok, nk = {_edge_key(e): e for e in old.edges}, {_edge_key(e): e for e in new.edges}
    d.edges_added = [_edge_text(e) for k, e in nk.items() if k not in ok]
    d.edges_removed = [_edge_text(e) for k, e in ok.items() if k not in nk]
    oc, nc = {c.name: c.filter for c in old.classes}, {c.name: c.filter for c in new.classes}
    d.classes_changed = sorted(f"{c}: {oc.get(c, '(none)')!r} -> {nc.get(c, '(none)')!r}"
                               for c in set(oc) | set(nc) if oc.get(c) != nc.get(c))
    return d


def plan_update(plan: Plan, new: Policy) -> tuple[Plan, PolicyDiff]:
    """The plan for ``new`` given the running ``plan``: NFs kept keep their instances where they
    are; added NFs are sized and placed incrementally (nothing placed moves)."""
    d = diff_policies(plan.policy, new)
    sizing = size(new, DEFAULT_UTILIZATION)
    counts: dict[str, list[int]] = {}
    for n, spec in new.nfs.items():
        if n in plan.policy.nfs:
            counts[n] = [int(i.partition("#")[2]) for i in plan.instances_of(n)]
        else:
            counts[n] = list(range(1, sizing.instances[n] + 1))
    sizing = _resized(sizing, {k: len(v) for k, v in counts.items()})
    graph = InstanceGraph.build(new, sizing, counts, plan.graph.pinned)
    kept = {i: s for i, s in plan.assignment.items() if i in set(graph.instances)}
    added = [instance_name(n, k) for n in d.nfs_added for k in counts[n]]
    placement = place_incremental(graph, plan.hardware, kept, added)
    nxt = {n: max(v, default=0) + 1 for n, v in counts.items()}
    for n, k in plan.next_index.items():
        if n in nxt:
            nxt[n] = max(nxt[n], k)
    new_plan = Plan(new, plan.hardware, sizing, graph, placement, {}, list(plan.notes), nxt)
    d.instances_added = {i: placement.assignment[i] for i in added if not new.nfs[nf_of(i)].inline}
    d.instances_removed = [i for n in d.nfs_removed for i in plan.instances_of(n)
                           if not plan.policy.nfs[n].inline]
    d.instances_replaced = {i: placement.assignment[i] for n in d.nfs_changed for i in new_plan.instances_of(n)
                            if not new.nfs[n].inline}
    return new_plan, d


def with_assignment(plan: Plan, changes: dict[str, str], solver: str = "moved") -> Plan:
    """``plan`` with some instances on other servers (nothing else changes)."""
    a = {**plan.assignment, **changes}
    pl = Placement(a, plan.graph.cut(a), solver, 0.0, None, plan.placement.feasible)
    return dataclasses.replace(plan, placement=pl)


def without_instances(plan: Plan, gone: set[str]) -> Plan:
    """``plan`` without the instances ``gone`` (of NFs that keep at least one other)."""
    counts = {n: [int(i.partition("#")[2]) for i in plan.instances_of(n) if i not in gone] for n in plan.policy.nfs}
    sizing = _resized(plan.sizing, {k: len(v) for k, v in counts.items()})
    graph = InstanceGraph.build(plan.policy, sizing, counts, plan.graph.pinned)
    kept = {i: s for i, s in plan.assignment.items() if i not in gone}
    placement = place_incremental(graph, plan.hardware, kept, [])
    return dataclasses.replace(plan, sizing=sizing, graph=graph, placement=placement)


# --- helpers on a running manager -----------------------------------------------------------------
async def spawn_instance(mgr: Manager, inst: str, server: str, spec: NFSpec, base_dir: str = ".") -> ActorRef:
    """Start an actor for member ``inst`` of NF ``spec`` on ``server`` under a fresh actor name, and
    wait until it is ready (its ``setup`` ran). The manager watches it (Terminated -> recovery)."""
    assert mgr.node is not None
    mgr._gen += 1
    name = f"{inst}~{mgr._gen}"
    ref = await mgr._spawn_on(server, "e2actors.nf.instance:NFInstance", name,
                              {"pipelet": spec.cls, "config": mgr.config_for(server, spec.config, base_dir),
                               "nf": nf_of(inst), "output": mgr.servers[server].switch, "monitor": mgr.ref,
                               "report_interval": mgr.report_interval, "instance": inst,
                               "clock": "replay" if mgr.clock == "packet" else "wall"})
    try:
        await mgr.node.ask(ref, GetStats(), timeout=10)
    except Exception as exc:
        await stop_actor(mgr, ref)
        raise ChangeFailed(f"{inst} on {server} did not start: {exc}") from exc
    mgr.node.watch(ref, mgr.ref)  # type: ignore[arg-type]
    return ref


async def stop_actor(mgr: Manager, ref: ActorRef) -> None:
    assert mgr.node is not None
    try:
        await mgr.node.ask(mgr.node.system_ref(ref.node), StopActor(ref.name), timeout=5)
    except Exception as exc:
        log.warning("stopping %s: %r", ref, exc)


async def ask_patiently(mgr: Manager, ref: ActorRef, msg: Any, timeout: float = 10.0) -> Any:
    """An ask that waits for room when the target's (dropping) mailbox is full."""
    assert mgr.node is not None
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await mgr.node.ask(ref, msg, timeout=max(0.1, deadline - time.monotonic()))
        except (MailboxFull, RemoteError) as exc:
            if "mailbox full" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)


def build_tables(mgr: Manager, routes: tuple[Route, ...], nfs: dict[str, NFSpec], assignment: dict[str, str],
                 refs: dict[str, ActorRef], states: dict[str, str]) -> dict[str, SwitchTable]:
    """Tables for every live switch from explicit parts (a transaction's in-between tables)."""
    from e2actors.manager.routing import _fanout_group, tables_from

    assert mgr.plan_ is not None
    mgr.version += 1
    hw = mgr.plan_.hardware
    gs = route_groups(SimpleNamespace(nfs=nfs), assignment, refs, states,  # type: ignore[arg-type]
                      sharded=bool(hw.shards))
    switches = {n: s.switch for n, s in mgr.servers.items() if s.switch is not None}
    # (the same ports, credit origins, shard parameters and clock as the manager's own tables)
    return tables_from(hw, mgr.version, routes, gs, switches, mgr.clock, _fanout_group(mgr.plan_.policy, hw),
                       servers=tuple(switches))


async def push(mgr: Manager, tables: dict[str, SwitchTable], first: tuple[str, ...] = ()) -> None:
    """Install tables on every switch (``first``: these servers before the others)."""
    assert mgr.node is not None
    node = mgr.node

    async def one(server: str) -> None:
        await node.ask(mgr.servers[server].switch, SetTable(tables[server]), timeout=10)  # type: ignore[arg-type]

    early = [s for s in first if s in tables]
    if early:
        await asyncio.gather(*(one(s) for s in early))
    await asyncio.gather(*(one(s) for s in tables if s not in early))


# --- the transaction ----------------------------------------------------------------------------
@dataclass
class Transaction:
    """One change to a running deployment (see the module docstring). ``new_plan`` is the plan
    once applied; ``add``/``replace`` map instances to their (new) servers; ``remove`` lists the
    instances of NFs that the new policy drops."""

    mgr: Manager
    new_plan: Plan
    add: dict[str, str] = field(default_factory=dict)
    replace: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    why: str = "update"
    #: Filled in: how long packets of replaced instances were held, when it ended.
    hold_seconds: float = 0.0
    version: int = 0

    async def run(self) -> None:
        mgr = self.mgr
        old_plan = mgr.plan_
        assert old_plan is not None and mgr.node is not None
        new_pol, old_pol = self.new_plan.policy, old_plan.policy
        spawned: dict[str, ActorRef] = {}
        # 1. spawn
        try:
            results = await asyncio.gather(
                *(spawn_instance(mgr, i, s, new_pol.nfs[nf_of(i)], new_pol.base_dir)
                  for i, s in {**self.add, **self.replace}.items()), return_exceptions=True)
            for i, r in zip({**self.add, **self.replace}, results):
                if isinstance(r, ActorRef):
                    spawned[i] = r
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException as exc:
            await asyncio.gather(*(stop_actor(mgr, r) for r in spawned.values()))
            raise ChangeFailed(f"{self.why}: spawn failed: {exc}") from exc
        nfs = {**old_pol.nfs, **new_pol.nfs}
        old_assign = {i: s for i, s in old_plan.assignment.items()}
        pushed = False
        t_hold = None
        try:
            # 2. prepare: new members known everywhere, replaced ones held
            refs = {**mgr.instances, **{i: spawned[i] for i in self.add}}
            states = {**mgr.states, **{i: "running" for i in self.add}, **{i: "moving" for i in self.replace}}
            if self.add or self.replace:
                t_hold = time.monotonic() if self.replace else None
                pushed = True
                await push(mgr, build_tables(mgr, policy_routes(old_pol), nfs, {**old_assign, **self.add},
                                             refs, states))
            # 3. state
            if self.replace:
                states_out = await asyncio.gather(*(ask_patiently(mgr, mgr.instances[i], ExportState())
                                                    for i in self.replace))
                await asyncio.gather(*(ask_patiently(mgr, spawned[i], ImportState(st))
                                       for i, st in zip(self.replace, states_out)))
            # 4. switch over
            removed_nfs = {nf_of(i) for i in self.remove} | (set(old_pol.nfs) - set(new_pol.nfs))
            rts = policy_routes(new_pol) + tuple(r for r in policy_routes(old_pol)
                                                 if r.source.startswith("nf:")
                                                 and r.source[3:].partition(".")[0] in removed_nfs)
            assign = {**{i: old_assign[i] for i in self.remove}, **self.new_plan.assignment}
            refs = {**mgr.instances, **spawned}
            states = {**{i: s for i, s in mgr.states.items()}, **{i: "running" for i in spawned},
                      **{i: "draining" for i in self.remove}}
            pushed = True
            first = tuple({old_assign[i] for i in self.replace})  # old places release first
            await push(mgr, build_tables(mgr, rts, nfs, assign, refs, states), first)
            if t_hold is not None:
                self.hold_seconds = time.monotonic() - t_hold
        except BaseException as exc:
            if pushed:
                try:
                    await mgr._push_tables()  # the old plan, a newer version: held packets go back
                except Exception as exc2:
                    log.error("rollback: pushing the previous tables failed: %r", exc2)
            await asyncio.gather(*(stop_actor(mgr, r) for r in spawned.values()))
            raise ChangeFailed(f"{self.why}: {exc!r}; rolled back") from exc
        # 5. commit
        old_refs = {i: mgr.instances[i] for i in self.replace if i in mgr.instances}
        mgr.plan_ = self.new_plan
        for i, r in spawned.items():
            mgr.instances[i] = r
            mgr.states[i] = "running"
        self.version = mgr.version
        for i, r in old_refs.items():
            await _retire_actor(mgr, i, r, old_assign.get(i, "?"), f"replaced ({self.why})")
        if self.remove:
            await _quiesce(mgr, [mgr.instances[i] for i in self.remove if i in mgr.instances])
            for i in self.remove:
                mgr.states.pop(i, None)
            gone = {i: mgr.instances.pop(i) for i in self.remove if i in mgr.instances}
            await mgr._push_tables()
            self.version = mgr.version
            for i, r in gone.items():
                await _retire_actor(mgr, i, r, old_assign.get(i, "?"), f"removed ({self.why})")
                mgr.autoscaler.forget(nf_of(i), i)


async def _retire_actor(mgr: Manager, inst: str, ref: ActorRef, server: str, why: str) -> None:
    """Keep an old actor's final counters for the summary, then stop it."""
    assert mgr.node is not None
    try:
        st = await mgr.node.ask(ref, GetStats(), timeout=3)
        mgr._gen += 1
        mgr._final_instances[f"{inst}~{mgr._gen}"] = {**st, "server": server, "retired": why}
    except Exception:
        pass
    mgr.node.unwatch(ref, mgr.ref)  # type: ignore[arg-type]
    await stop_actor(mgr, ref)


async def _quiesce(mgr: Manager, refs: list[ActorRef], timeout: float = 3.0) -> None:
    """Wait until these instances have nothing queued and take nothing more (two quiet polls)."""
    assert mgr.node is not None
    last = None
    quiet = 0
    deadline = time.monotonic() + timeout
    while refs and time.monotonic() < deadline:
        try:
            sts = await asyncio.gather(*(mgr.node.ask(r, GetStats(), timeout=2) for r in refs))
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


# --- the operations -------------------------------------------------------------------------------
async def update(mgr: Manager, policy: Policy, dry_run: bool = False) -> PolicyDiff:
    """Apply ``policy`` to the running deployment as one transaction (see the module docstring).
    Returns the difference (``applied``, ``version``, ``seconds``); raises :class:`PolicyError` or
    :class:`PlacementError` (nothing changed) or :class:`ChangeFailed` (rolled back)."""
    async with mgr._lock:
        assert mgr.plan_ is not None
        t0 = time.monotonic()
        new_plan, d = plan_update(mgr.plan_, policy)
        if dry_run or d.empty:
            if d.empty and not dry_run:
                mgr.plan_ = dataclasses.replace(mgr.plan_, policy=policy)
            return d
        tx = Transaction(mgr, new_plan, add=dict(d.instances_added), replace=dict(d.instances_replaced),
                         remove=list(d.instances_removed), why="update")
        try:
            await tx.run()
        except ChangeFailed as exc:
            d.error = str(exc)
            mgr._event("*", "update-failed", str(exc))
            exc.diff = d  # type: ignore[attr-defined]
            raise
        d.applied, d.version, d.seconds = True, tx.version, time.monotonic() - t0
        summary = "; ".join(x for x in d.text().splitlines() if not x.startswith("applied"))
        held = f", packets of replaced instances held {tx.hold_seconds * 1000:.1f} ms" if tx.replace else ""
        mgr._event("*", "update", f"{summary} (tables v{d.version}, {d.seconds * 1000:.0f} ms{held})")
        for n in [*d.nfs_added, *d.nfs_changed]:
            mgr.autoscaler.changed(n, time.monotonic())
    for n, spec in policy.nfs.items():  # new bounds on kept NFs
        cur = mgr.instance_counts().get(n, 0)
        lo, hi = spec.min_instances, spec.max_instances or cur
        if not spec.inline and (cur < lo or cur > hi):
            await mgr.scale(n, min(max(cur, lo), hi), reason="policy update bounds")
    return d


async def upgrade(mgr: Manager, nf: str, cls: str, config: dict[str, Any] | None = None) -> PolicyDiff:
    """Replace NF ``nf``'s code by ``cls`` (``module:QualName``), and its config if given: new
    instances take over the old ones' state (export/import) while their packets are held."""
    assert mgr.plan_ is not None
    pol = mgr.plan_.policy
    if nf not in pol.nfs:
        raise KeyError(f"no NF {nf!r}")
    spec = dataclasses.replace(pol.nfs[nf], cls=cls, config=dict(config) if config is not None else pol.nfs[nf].config)
    new = Policy({**pol.nfs, nf: spec}, pol.classes, pol.edges, pol.file, pol.name, pol.base_dir)
    return await update(mgr, new)


async def move(mgr: Manager, instance: str, server: str, why: str = "by request") -> float:
    """Move ``instance`` to ``server`` with its state. Returns how long its packets were held (s)."""
    async with mgr._lock:
        plan = mgr.plan_
        assert plan is not None
        if instance not in plan.assignment or instance in (IN, OUT):
            raise KeyError(f"no instance {instance!r}")
        spec = plan.policy.nfs[nf_of(instance)]
        if spec.inline:
            raise E2Error(f"{instance} is inline (runs in every switch): nothing to move")
        src = plan.assignment[instance]
        if server == src:
            return 0.0
        if server not in mgr.servers or server not in plan.hardware.servers:
            raise PlacementError(f"no server {server!r}")
        if mgr.states.get(instance, "running") != "running":
            raise E2Error(f"{instance} is {mgr.states.get(instance)}: only a running instance moves")
        used = sum(plan.graph.cores[i] for i, s in plan.assignment.items() if s == server)
        if used + plan.graph.cores[instance] > plan.hardware.servers[server].cores:
            raise PlacementError(f"{server} has no free core for {instance}")
        t0 = time.monotonic()
        tx = Transaction(mgr, with_assignment(plan, {instance: server}), replace={instance: server},
                         why=f"move {instance}")
        await tx.run()
        mgr._event(nf_of(instance), "move", f"{instance} {src} -> {server} ({why}); packets held "
                   f"{tx.hold_seconds * 1000:.1f} ms, done in {(time.monotonic() - t0) * 1000:.0f} ms", at=t0)
        mgr.last_move_pause = tx.hold_seconds
        return tx.hold_seconds


# --- rebalancing ----------------------------------------------------------------------------------
def pick_rebalance(plan: Plan, busy: dict[str, float], servers: list[str], states: dict[str, str],
                   threshold: float = 0.3) -> tuple[str, str, str] | None:
    """One move that evens out the servers' load, or None. ``busy``: instance -> busy fraction
    (0..1, from load reports). A server's load is the sum over its instances. The move takes the
    instance from the busiest server to the least busy one with a free core, choosing the instance
    that brings the two closest together, and only if the gap exceeds ``threshold`` and shrinks.
    Returns ``(instance, from, to)``."""
    hw = plan.hardware
    cand = [s for s in servers if s in hw.servers and hw.servers[s].cores > 0]
    if len(cand) < 2:
        return None
    load = {s: 0.0 for s in cand}
    used = {s: 0 for s in cand}
    movable: dict[str, list[str]] = {s: [] for s in cand}
    for i, s in plan.assignment.items():
        if s not in load or i in (IN, OUT):
            continue
        used[s] += plan.graph.cores.get(i, 0)
        load[s] += busy.get(i, 0.0)
        if plan.graph.cores.get(i, 0) and states.get(i, "running") == "running":
            movable[s].append(i)
    hi = max(cand, key=lambda s: (load[s], s))
    targets = [s for s in cand if s != hi and used[s] < hw.servers[s].cores]
    if not targets:
        return None
    lo = min(targets, key=lambda s: (load[s], s))
    gap = load[hi] - load[lo]
    if gap <= threshold:
        return None
    best = None
    for i in movable[hi]:
        b = busy.get(i, 0.0)
        new_gap = abs((load[hi] - b) - (load[lo] + b))
        if new_gap < gap - 1e-9 and (best is None or new_gap < best[0]):
            best = (new_gap, i)
    return None if best is None else (best[1], hi, lo)


async def rebalance(mgr: Manager, threshold: float = 0.3) -> tuple[str, str, str] | None:
    """Make one rebalancing move if the servers' load is uneven (see :func:`pick_rebalance`)."""
    if mgr.plan_ is None:
        return None
    now = time.monotonic()
    busy = {i: b for i, (b, t) in mgr._busy.items() if now - t < 3 * mgr.report_interval + 1.0}
    choice = pick_rebalance(mgr.plan_, busy, list(mgr.servers), mgr.states, threshold)
    if choice is None:
        return None
    inst, src, dst = choice
    await move(mgr, inst, dst, why=f"rebalance: busy {src} {sum(b for i, b in busy.items() if mgr.plan_.assignment.get(i) == src):.2f} "
               f"vs {dst} {sum(b for i, b in busy.items() if mgr.plan_.assignment.get(i) == dst):.2f}")
    for i in list(mgr._busy):  # measure afresh after the change
        mgr._busy.pop(i, None)
    return choice
