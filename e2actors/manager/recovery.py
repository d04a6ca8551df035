"""Failures: instances that crash for good, and servers (worker processes) that die.

The manager watches every instance actor it starts (``node.watch(ref, manager)``), so:

* An instance whose ``process`` raises is restarted by its node per its restart policy (the
  packets of the failed batch are counted by its switch as ``nf error in NF``). One that keeps
  crashing exhausts the policy and stops: its watcher gets ``Terminated(ref, "failed: ...")``.
  :meth:`Recovery.instance_failed` then takes it out of the path: when its NF has other
  instances it leaves the plan and the tables (its flows go to the others); when it was the last,
  the member stays in the tables as ``failed`` and the switches drop that NF's packets with the
  reason ``nf NF failed``. Either way an event of kind ``failed`` goes to the summary and the
  metrics; the run carries on.
* A worker killed outright (SIGKILL) stops answering heartbeats; the manager's node publishes
  ``NodeLost``. :meth:`Recovery.node_lost` drops that server (its cores from the hardware, its
  switch from the tables), places its instances again on the surviving servers (incremental
  placement: nothing that runs moves), starts them there (fresh state: what the lost process
  held is gone) and reprograms every switch. The instances keep their member names, so the
  switches' flow tables keep sending each flow to the same member, now elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from e2actors.errors import E2Error
from e2actors.manager.changes import spawn_instance, without_instances
from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import nf_of
from e2actors.manager.placement import place_incremental
from e2actors.manager.plan import Plan
from e2actors.runtime.messages import NodeLost, Terminated

if TYPE_CHECKING:
    from e2actors.manager.manager import Manager

__all__ = ["Recovery", "replace_lost"]

log = logging.getLogger("e2actors.manager.recovery")


def replace_lost(plan: Plan, lost: str) -> tuple[Plan, dict[str, str]]:
    """The plan without server ``lost`` (kept in the hardware with no cores, so nothing lands
    there) and its instances placed again on the others. Returns ``(plan, {instance: server})``
    for the instances that moved. Raises :class:`PlacementError` when the others lack room."""
    hw = plan.hardware
    servers = [dataclasses.replace(s, cores=0) if n == lost else s for n, s in hw.servers.items()]
    new_hw = Hardware(servers, hw.ports, hw.file)
    gone = [i for i, s in plan.assignment.items() if s == lost and plan.graph.cores.get(i, 0)]
    kept = {i: s for i, s in plan.assignment.items() if i not in gone}
    placement = place_incremental(plan.graph, new_hw, kept, gone)
    placement.solver = "recovery"
    new = dataclasses.replace(plan, hardware=new_hw, placement=placement)
    return new, {i: placement.assignment[i] for i in gone}


class Recovery:
    """The manager's failure handling (see the module docstring)."""

    def __init__(self, mgr: Manager) -> None:
        self.mgr = mgr
        self.lost_servers: dict[str, float] = {}
        #: Per lost server: seconds from detection to the reprogrammed switches.
        self.recovered: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    # --- dispatch (called from the manager actor: never blocks it) -------------------------------
    def on_terminated(self, msg: Terminated) -> None:
        if msg.reason in ("stopped", "node lost"):
            return  # stopped on purpose, or part of a node loss (NodeLost handles that)
        inst = next((i for i, r in self.mgr.instances.items() if r == msg.ref), None)
        if inst is None:
            return  # an actor replaced or retired meanwhile
        asyncio.get_running_loop().create_task(self.instance_failed(inst, msg.ref, msg.reason))

    def on_node_lost(self, msg: NodeLost) -> None:
        server = next((n for n, s in self.mgr.servers.items() if s.node_address == msg.node), None)
        if server is None or server in self.lost_servers:
            return
        self.lost_servers[server] = time.monotonic()
        asyncio.get_running_loop().create_task(self.node_lost(server, msg.reason))

    # --- an instance that failed for good --------------------------------------------------------
    async def instance_failed(self, inst: str, ref, reason: str) -> None:
        mgr = self.mgr
        async with mgr._lock:
            if mgr.instances.get(inst) != ref or mgr.plan_ is None:
                return
            nf = nf_of(inst)
            plan = mgr.plan_
            others = [i for i in plan.instances_of(nf) if i != inst and mgr.states.get(i) not in ("failed",)]
            self.failed[inst] = reason
            mgr.autoscaler.forget(nf, inst)
            if others:
                mgr.plan_ = without_instances(plan, {inst})
                mgr.states.pop(inst, None)
                mgr.instances.pop(inst, None)
                detail = f"{inst} {reason}; taken out of the path, its flows go to {', '.join(others)}"
            else:
                mgr.states[inst] = "failed"
                detail = f"{inst} {reason}; the last instance of {nf}: its packets are dropped (nf {nf} failed)"
            try:
                await mgr._push_tables()
            except Exception as exc:
                detail += f"; reprogramming the switches failed: {exc!r}"
            mgr._event(nf, "failed", detail)
            mgr.autoscaler.changed(nf, time.monotonic())

    # --- a server that is gone -------------------------------------------------------------------
    async def node_lost(self, server: str, reason: str) -> None:
        mgr = self.mgr
        t0 = self.lost_servers[server]
        async with mgr._lock:
            plan = mgr.plan_
            if plan is None or mgr.node is None:
                return
            srv = mgr.servers.pop(server, None)
            if srv is not None and srv.proc is not None:
                mgr._lost_procs.append(srv.proc)
            mgr._event("*", "node-lost", f"{server} ({reason}): re-placing "
                       + (", ".join(i for i, s in plan.assignment.items() if s == server and i not in ("in", "out"))
                          or "nothing"))
            if any(p.server == server for p in plan.hardware.ports.values()):
                mgr._event("*", "failed", f"{server} held external ports: its traffic cannot recover")
            try:
                new_plan, moved = replace_lost(plan, server)
            except E2Error as exc:
                # No room: the lost instances stay failed (their NFs drop with a reason).
                new_plan, moved = plan, {}
                for i, s in plan.assignment.items():
                    if s == server and plan.graph.cores.get(i, 0):
                        mgr.states[i] = "failed"
                        mgr.instances.pop(i, None)
                mgr._event("*", "failed", f"cannot re-place {server}'s instances: {exc}")
            spawned = {}
            for inst, target in moved.items():
                old = mgr.instances.pop(inst, None)
                if old is not None:
                    mgr.node.unwatch(old, mgr.ref)  # type: ignore[arg-type]
                try:
                    spawned[inst] = await spawn_instance(mgr, inst, target, new_plan.policy.nfs[nf_of(inst)],
                                                         new_plan.policy.base_dir)
                except E2Error as exc:
                    mgr._event(nf_of(inst), "failed", f"{inst} could not restart on {target}: {exc}")
            failed = {i for i in moved if i not in spawned}
            mgr.plan_ = new_plan
            for inst, ref in spawned.items():
                mgr.instances[inst] = ref
                mgr.states[inst] = "running"
            for inst in failed:
                mgr.states[inst] = "failed"
            try:
                await mgr._push_tables()
            except Exception as exc:
                mgr._event("*", "failed", f"reprogramming the switches after losing {server}: {exc!r}")
            dt = time.monotonic() - t0
            self.recovered[server] = dt
            mgr._event("*", "recovered", f"{server}'s instances now on "
                       + (", ".join(f"{i}@{s}" for i, s in moved.items() if i in spawned) or "-")
                       + f"; switches reprogrammed {dt * 1000:.0f} ms after the loss was noticed")
