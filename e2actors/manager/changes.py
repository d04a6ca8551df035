"""Changing a running deployment: moves with state, live policy updates, live upgrades.

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
update that changes one NF's class (:mod:`e2actors.manager.rebalance` picks moves that even out
the servers' load). The plans come from :mod:`e2actors.manager.diff`; every actor started or
stopped and every table pushed goes through the :class:`~e2actors.manager.deployment.Deployment`.
Replacements keep the member name (``nat#1``), so every switch's balancer keeps its flow table
and bucket ownership; only the actor (``nat#1~3``, a new name on its server) changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from e2actors.errors import ChangeFailed, E2Error, PlacementError
from e2actors.manager.deployment import Deployment
from e2actors.manager.diff import PolicyDiff, plan_update, with_assignment
from e2actors.manager.instances import nf_of
from e2actors.manager.plan import Plan
from e2actors.manager.policy import IN, OUT, Policy
from e2actors.manager.routing import routes as policy_routes
from e2actors.manager.scaling import Autoscaler
from e2actors.nf.messages import ExportState, ImportState
from e2actors.runtime.ref import ActorRef

__all__ = ["Transaction", "move", "update", "upgrade", "upgraded_policy"]

log = logging.getLogger("e2actors.manager.changes")


# --- the transaction ----------------------------------------------------------------------------
@dataclass
class Transaction:
    """One change to a running deployment (see the module docstring). ``new_plan`` is the plan
    once applied; ``add``/``replace`` map instances to their (new) servers; ``remove`` lists the
    instances of NFs that the new policy drops (``autoscaler`` forgets them once gone)."""

    dep: Deployment
    new_plan: Plan
    add: dict[str, str] = field(default_factory=dict)
    replace: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    why: str = "update"
    autoscaler: Autoscaler | None = None
    #: Filled in: how long packets of replaced instances were held, when it ended.
    hold_seconds: float = 0.0
    version: int = 0

    async def run(self) -> None:
        dep = self.dep
        old_plan = dep.plan
        assert old_plan is not None
        new_pol, old_pol = self.new_plan.policy, old_plan.policy
        spawned: dict[str, ActorRef] = {}
        # 1. spawn
        try:
            results = await asyncio.gather(
                *(dep.spawn_instance(i, s, new_pol.nfs[nf_of(i)], new_pol.base_dir, replacement=True)
                  for i, s in {**self.add, **self.replace}.items()), return_exceptions=True)
            for i, r in zip({**self.add, **self.replace}, results):
                if isinstance(r, ActorRef):
                    spawned[i] = r
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException as exc:
            await asyncio.gather(*(dep.stop(r) for r in spawned.values()))
            raise ChangeFailed(f"{self.why}: spawn failed: {exc}") from exc
        nfs = {**old_pol.nfs, **new_pol.nfs}
        old_assign = dict(old_plan.assignment)
        pushed = False
        t_hold = None
        try:
            # 2. prepare: new members known everywhere, replaced ones held
            refs = {**dep.instances, **{i: spawned[i] for i in self.add}}
            states = {**dep.states, **{i: "running" for i in self.add}, **{i: "moving" for i in self.replace}}
            if self.add or self.replace:
                t_hold = time.monotonic() if self.replace else None
                pushed = True
                await dep.push_tables(dep.tables_for(policy_routes(old_pol), nfs, {**old_assign, **self.add},
                                                     refs, states))
            # 3. state
            if self.replace:
                states_out = await asyncio.gather(*(dep.ask_patiently(dep.instances[i], ExportState())
                                                    for i in self.replace))
                await asyncio.gather(*(dep.ask_patiently(spawned[i], ImportState(st))
                                       for i, st in zip(self.replace, states_out)))
            # 4. switch over
            removed_nfs = {nf_of(i) for i in self.remove} | (set(old_pol.nfs) - set(new_pol.nfs))
            rts = policy_routes(new_pol) + tuple(r for r in policy_routes(old_pol)
                                                 if r.source.startswith("nf:")
                                                 and r.source[3:].partition(".")[0] in removed_nfs)
            assign = {**{i: old_assign[i] for i in self.remove}, **self.new_plan.assignment}
            refs = {**dep.instances, **spawned}
            states = {**dep.states, **{i: "running" for i in spawned}, **{i: "draining" for i in self.remove}}
            pushed = True
            first = tuple({old_assign[i] for i in self.replace})  # old places release first
            await dep.push_tables(dep.tables_for(rts, nfs, assign, refs, states), first=first)
            if t_hold is not None:
                self.hold_seconds = time.monotonic() - t_hold
        except BaseException as exc:
            if pushed:
                try:
                    await dep.push_tables()  # the old plan, a newer version: held packets go back
                except Exception as exc2:
                    log.error("rollback: pushing the previous tables failed: %r", exc2)
            await asyncio.gather(*(dep.stop(r) for r in spawned.values()))
            raise ChangeFailed(f"{self.why}: {exc!r}; rolled back") from exc
        # 5. commit
        old_refs = {i: dep.instances[i] for i in self.replace if i in dep.instances}
        dep.set_plan(self.new_plan)
        for i, r in spawned.items():
            dep.add_instance(i, r)
        self.version = dep.version
        for i, r in old_refs.items():
            await dep.retire(i, r, old_assign.get(i, "?"), f"replaced ({self.why})")
        if self.remove:
            await dep.quiesce([dep.instances[i] for i in self.remove if i in dep.instances])
            gone = {i: r for i in self.remove if (r := dep.remove_instance(i)) is not None}
            await dep.push_tables()
            self.version = dep.version
            for i, r in gone.items():
                await dep.retire(i, r, old_assign.get(i, "?"), f"removed ({self.why})")
                if self.autoscaler is not None:
                    self.autoscaler.forget(nf_of(i), i)


# --- the operations -------------------------------------------------------------------------------
async def update(dep: Deployment, policy: Policy, dry_run: bool = False,
                 autoscaler: Autoscaler | None = None) -> PolicyDiff:
    """Apply ``policy`` to the running deployment as one transaction (see the module docstring).
    Returns the difference (``applied``, ``version``, ``seconds``); raises :class:`PolicyError` or
    :class:`PlacementError` (nothing changed) or :class:`ChangeFailed` (rolled back, its ``diff``
    set). ``autoscaler``: told of the NFs added or changed. The new instance bounds of kept NFs
    are the caller's to apply (:meth:`Manager.update` scales them)."""
    async with dep.lock:
        plan = dep.plan
        assert plan is not None
        t0 = time.monotonic()
        new_plan, d = plan_update(plan, policy)
        if dry_run or d.empty:
            if d.empty and not dry_run:
                dep.set_plan(dataclasses.replace(plan, policy=policy))
            return d
        tx = Transaction(dep, new_plan, add=dict(d.instances_added), replace=dict(d.instances_replaced),
                         remove=list(d.instances_removed), why="update", autoscaler=autoscaler)
        try:
            await tx.run()
        except ChangeFailed as exc:
            d.error = str(exc)
            dep.record("*", "update-failed", str(exc))
            exc.diff = d
            raise
        d.applied, d.version, d.seconds = True, tx.version, time.monotonic() - t0
        summary = "; ".join(x for x in d.text().splitlines() if not x.startswith("applied"))
        held = f", packets of replaced instances held {tx.hold_seconds * 1000:.1f} ms" if tx.replace else ""
        dep.record("*", "update", f"{summary} (tables v{d.version}, {d.seconds * 1000:.0f} ms{held})")
        if autoscaler is not None:
            for n in [*d.nfs_added, *d.nfs_changed]:
                autoscaler.changed(n, time.monotonic())
    return d


def upgraded_policy(policy: Policy, nf: str, cls: str, config: dict[str, Any] | None = None) -> Policy:
    """``policy`` with NF ``nf``'s class replaced by ``cls`` (and its config, if given)."""
    if nf not in policy.nfs:
        raise KeyError(f"no NF {nf!r}")
    old = policy.nfs[nf]
    spec = dataclasses.replace(old, cls=cls, config=dict(config) if config is not None else old.config)
    return Policy({**policy.nfs, nf: spec}, policy.classes, policy.edges, policy.file, policy.name, policy.base_dir)


async def upgrade(dep: Deployment, nf: str, cls: str, config: dict[str, Any] | None = None,
                  autoscaler: Autoscaler | None = None) -> PolicyDiff:
    """Replace NF ``nf``'s code by ``cls`` (``module:QualName``), and its config if given: new
    instances take over the old ones' state (export/import) while their packets are held."""
    assert dep.plan is not None
    return await update(dep, upgraded_policy(dep.plan.policy, nf, cls, config), autoscaler=autoscaler)


async def move(dep: Deployment, instance: str, server: str, why: str = "by request") -> float:
    """Move ``instance`` to ``server`` with its state. Returns how long its packets were held (s)."""
    async with dep.lock:
        plan = dep.plan
        assert plan is not None
        if instance not in plan.assignment or instance in (IN, OUT):
            raise KeyError(f"no instance {instance!r}")
        spec = plan.policy.nfs[nf_of(instance)]
        if spec.inline:
            raise E2Error(f"{instance} is inline (runs in every switch): nothing to move")
        src = plan.assignment[instance]
        if server == src:
            return 0.0
        if server not in dep.servers or server not in plan.hardware.servers:
            raise PlacementError(f"no server {server!r}")
        if dep.states.get(instance, "running") != "running":
            raise E2Error(f"{instance} is {dep.states.get(instance)}: only a running instance moves")
        used = sum(plan.graph.cores[i] for i, s in plan.assignment.items() if s == server)
        if used + plan.graph.cores[instance] > plan.hardware.servers[server].cores:
            raise PlacementError(f"{server} has no free core for {instance}")
        t0 = time.monotonic()
        tx = Transaction(dep, with_assignment(plan, {instance: server}), replace={instance: server},
                         why=f"move {instance}")
        await tx.run()
        dep.record(nf_of(instance), "move", f"{instance} {src} -> {server} ({why}); packets held "
                   f"{tx.hold_seconds * 1000:.1f} ms, done in {(time.monotonic() - t0) * 1000:.0f} ms", at=t0)
        dep.last_move_pause = tx.hold_seconds
        return tx.hold_seconds
