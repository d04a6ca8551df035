"""Failures: instances that crash for good, and servers (worker processes) that die.

The deployment watches every instance actor it starts (the manager actor gets ``Terminated``), so:

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

import logging
import time

from e2actors.errors import E2Error
from e2actors.manager.deployment import Deployment
from e2actors.manager.diff import replace_lost, without_instances
from e2actors.manager.instances import nf_of
from e2actors.manager.scaling import Autoscaler
from e2actors.runtime.messages import NodeLost, Terminated
from e2actors.runtime.ref import ActorRef

__all__ = ["Recovery"]

log = logging.getLogger("e2actors.manager.recovery")


class Recovery:
    """The deployment's failure handling (see the module docstring); ``autoscaler`` forgets the
    instances that failed and waits its cooldown after each change."""

    def __init__(self, dep: Deployment, autoscaler: Autoscaler) -> None:
        self.dep = dep
        self.autoscaler = autoscaler
        self.lost_servers: dict[str, float] = {}
        #: Per lost server: seconds from detection to the reprogrammed switches.
        self.recovered: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    # --- dispatch (called from the manager actor: never blocks it) -------------------------------
    def on_terminated(self, msg: Terminated) -> None:
        if msg.reason in ("stopped", "node lost"):
            return  # stopped on purpose, or part of a node loss (NodeLost handles that)
        inst = next((i for i, r in self.dep.instances.items() if r == msg.ref), None)
        if inst is None:
            return  # an actor replaced or retired meanwhile
        self.dep.spawn_task(self.instance_failed(inst, msg.ref, msg.reason), f"recovery: {inst} failed")

    def on_node_lost(self, msg: NodeLost) -> None:
        server = self.dep.server_of_node(msg.node)
        if server is None or server in self.lost_servers:
            return
        self.lost_servers[server] = time.monotonic()
        self.dep.spawn_task(self.node_lost(server, msg.reason), f"recovery: {server} lost")

    # --- an instance that failed for good --------------------------------------------------------
    async def instance_failed(self, inst: str, ref: ActorRef, reason: str) -> None:
        dep = self.dep
        async with dep.lock:
            plan = dep.plan
            if dep.instances.get(inst) != ref or plan is None:
                return
            nf = nf_of(inst)
            others = [i for i in plan.instances_of(nf) if i != inst and dep.states.get(i) not in ("failed",)]
            self.failed[inst] = reason
            self.autoscaler.forget(nf, inst)
            if others:
                dep.set_plan(without_instances(plan, {inst}))
                dep.remove_instance(inst)
                detail = f"{inst} {reason}; taken out of the path, its flows go to {', '.join(others)}"
            else:
                dep.set_state(inst, "failed")
                detail = f"{inst} {reason}; the last instance of {nf}: its packets are dropped (nf {nf} failed)"
            try:
                await dep.push_tables()
            except Exception as exc:
                detail += f"; reprogramming the switches failed: {exc!r}"
            dep.record(nf, "failed", detail)
            self.autoscaler.changed(nf, time.monotonic())

    # --- a server that is gone -------------------------------------------------------------------
    async def node_lost(self, server: str, reason: str) -> None:
        dep = self.dep
        t0 = self.lost_servers[server]
        async with dep.lock:
            plan = dep.plan
            if plan is None or dep.node is None:
                return
            dep.drop_server(server)
            dep.record("*", "node-lost", f"{server} ({reason}): re-placing "
                       + (", ".join(i for i, s in plan.assignment.items() if s == server and i not in ("in", "out"))
                          or "nothing"))
            if any(p.server == server for p in plan.hardware.ports.values()):
                dep.record("*", "failed", f"{server} held external ports: its traffic cannot recover")
            try:
                new_plan, moved = replace_lost(plan, server)
            except E2Error as exc:
                # No room: the lost instances stay failed (their NFs drop with a reason).
                new_plan, moved = plan, {}
                for i, s in plan.assignment.items():
                    if s == server and plan.graph.cores.get(i, 0):
                        dep.mark_failed(i)
                dep.record("*", "failed", f"cannot re-place {server}'s instances: {exc}")
            spawned = {}
            for inst, target in moved.items():
                old = dep.remove_instance(inst)
                if old is not None:
                    dep.unwatch(old)
                try:
                    spawned[inst] = await dep.spawn_instance(inst, target, new_plan.policy.nfs[nf_of(inst)],
                                                             new_plan.policy.base_dir, replacement=True)
                except E2Error as exc:
                    dep.record(nf_of(inst), "failed", f"{inst} could not restart on {target}: {exc}")
            dep.set_plan(new_plan)
            for inst, ref in spawned.items():
                dep.add_instance(inst, ref)
            for inst in moved:
                if inst not in spawned:
                    dep.set_state(inst, "failed")
            try:
                await dep.push_tables()
            except Exception as exc:
                dep.record("*", "failed", f"reprogramming the switches after losing {server}: {exc!r}")
            dt = time.monotonic() - t0
            self.recovered[server] = dt
            dep.record("*", "recovered", f"{server}'s instances now on "
                       + (", ".join(f"{i}@{s}" for i, s in moved.items() if i in spawned) or "-")
                       + f"; switches reprogrammed {dt * 1000:.0f} ms after the loss was noticed")
